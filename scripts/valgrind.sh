#!/usr/bin/env bash
# Runs apache2 with the module under valgrind's memcheck, as one process, through a few
# thousand requests over every method, the status page and failing members (tests/valgrind.rs),
# and prints valgrind's summary. Fails if any error has a frame in the module.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
lbrs_setup --tests
cargo build -p mod_lbmethod_rs
exec cargo test --test valgrind -- --nocapture
