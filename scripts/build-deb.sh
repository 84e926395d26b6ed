#!/usr/bin/env bash
# Builds the Debian package libapache2-mod-lbmethod-rs (debian/: debhelper and dh_apache2)
# against the apache2-dev installed here, and checks it with lintian. It leaves in
# target/debian/:
#   libapache2-mod-lbmethod-rs_<version>_<arch>.deb          the package to install
#   libapache2-mod-lbmethod-rs-dbgsym_<version>_<arch>.deb  its debug symbols
#   libapache2-mod-lbmethod-rs_<version>_<arch>.buildinfo and .changes
#
# dpkg-buildpackage writes beside the source tree, so the build runs in a copy of the tree
# under target/debian/build/ (what a clean checkout would hold: no target/, no .git), with
# cargo's target directory kept in target/debian/cargo/ so that rebuilds are incremental.
#
# Installs the Debian packages it needs when missing (as scripts/setup.sh does). Needs cargo
# (Rust 1.88 or later, from rustup) on PATH or in ~/.cargo/bin. Crates come from cargo's
# cache, or from crates.io when they are not there yet: that needs network access, unless
# CARGO_NET_OFFLINE=true, which forbids it.
# Environment: LBRS_LINTIAN=0 skips lintian.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

say() { printf 'build-deb: %s\n' "$*" >&2; }

# apache2-dev: apxs, the headers and dh_apache2; libclang-dev: bindgen; build-essential: the
# linker; debhelper and dpkg-dev: the package build; lintian: the check.
lbrs_setup_packages apache2-dev libclang-dev build-essential debhelper dpkg-dev lintian
lbrs_setup_rust

# The package version is the crate's: say so when one was bumped without the other.
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
deb_version=$(dpkg-parsechangelog -l debian/changelog -S Version)
if [ "$crate_version" != "$deb_version" ]; then
    say "Cargo.toml says $crate_version but debian/changelog says $deb_version: add a" \
        "debian/changelog entry for $crate_version (dch -v $crate_version)"
    exit 1
fi

out=$root/target/debian
build=$out/build
mkdir -p "$out"
rm -rf "$build"
mkdir -p "$build/src"
# tar keeps modification times, so cargo sees unchanged sources as unchanged.
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$build/src" -xf -

check=()
if [ "${LBRS_LINTIAN:-1}" != 0 ]; then
    # Run on the .changes: the package and its -dbgsym. Warnings fail the build, as errors do.
    check=(--check-command=lintian "--check-option=--fail-on=error,warning" --check-option=--display-info)
fi

# LBRS_DEB_CARGO_TARGET: another tree's cargo directory to build in (tests/debian_package.rs
# builds a second version of the package without compiling every crate again).
cargo_target=${LBRS_DEB_CARGO_TARGET:-$out/cargo}
say "building in $build/src (cargo target directory: $cargo_target)"
(cd "$build/src" && CARGO_TARGET_DIR="$cargo_target" dpkg-buildpackage --build=binary --no-sign "${check[@]}")

package=libapache2-mod-lbmethod-rs
rm -f "$out/${package}"_*.deb "$out/${package}"-dbgsym_*.deb "$out/${package}"_*.buildinfo \
    "$out/${package}"_*.changes
# The -dbgsym package is missing when DEB_BUILD_OPTIONS has nostrip.
shopt -s nullglob
mv "$build/${package}"_* "$build/${package}"-dbgsym_* "$out/"
shopt -u nullglob
rm -rf "$build"
deb=$(ls "$out/${package}_${deb_version}_"*.deb)
say "built $deb"
printf '%s\n' "$deb"
