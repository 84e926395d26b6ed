#!/usr/bin/env bash
# Builds mod_lbmethod_rs and runs a demo in the foreground: three backends and Apache on
# 127.0.0.1 (port 8080, or $LBRS_DEMO_PORT), balancing with lbmethod=byweight at
# loadfactors 1:2:3. The status page is at /lb-status (add ?format=json for JSON) and
# balancer-manager at /balancer-manager, both reachable from this machine only.
# Ctrl-C stops Apache and the backends.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
lbrs_setup

echo "demo: building the module and the demo (cargo build --release)..." >&2
cargo build --release
cargo build --release -p lbrs-harness --bin lbrs-demo

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$root/target}

# The demo loads the module just built; exec so that Ctrl-C and kill reach it directly.
export LBRS_MODULE="$target_dir/release/libmod_lbmethod_rs.so"
exec "$target_dir/release/lbrs-demo"
