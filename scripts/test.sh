#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start the real apache2
# with the module and real backends on 127.0.0.1, and the real programs the recipes name.
# Installs what is missing first (scripts/setup.sh --tests). Works as root (apache2's children then run as www-data) and not.
# Then it builds httpd 2.4.37 (the oldest release a main distribution ships, RHEL 8) from
# source, builds the module against it and runs the smoke test there (scripts/compat.sh; the
# httpd build is kept in target/compat and reused). LBRS_COMPAT="2.4.37 2.4.52" names other
# releases, LBRS_COMPAT=none skips this part.
# Extra arguments go to `cargo test` (e.g. a test name filter) and skip the compatibility part.
# The exit status is the suite's.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
lbrs_setup --tests

# Each integration test runs a multi-process apache2 and a load generator: two at a time is
# what a 2-core machine carries. Override with RUST_TEST_THREADS.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
# The integration tests load target/debug/libmod_lbmethod_rs.so, and `cargo test` alone does
# not build a cdylib-only package: build it first, so they never load a stale one.
cargo build -p mod_lbmethod_rs
cargo test --workspace "$@"
compat=${LBRS_COMPAT:-2.4.37}
if [ "$#" -eq 0 ] && [ "$compat" != none ]; then
    # shellcheck disable=SC2086 # a list of versions
    LBRS_COMPAT_OPTIONAL=1 scripts/compat.sh $compat
fi
