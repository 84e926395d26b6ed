#!/usr/bin/env bash
# Lays out what the Dockerfile's build stage would leave, for an image built without that
# stage: a directory whose src/ is this tree (no target/, no .git) with the package that
# scripts/build-deb.sh built in src/target/debian/, where the runtime stage's step
# (docker/setup-image.sh) looks for it. Name it to the build as the context "build", which
# then stands in for the stage of that name (the Rust toolchain is never fetched):
#
#   scripts/build-deb.sh
#   docker/build-context.sh /tmp/lbrs-build
#   docker buildx build --build-context build=/tmp/lbrs-build -t mod-lbmethod-rs .
#   podman build --format=docker --build-context build=/tmp/lbrs-build -t mod-lbmethod-rs .
#
# (podman: --format=docker keeps the HEALTHCHECK.) tests/container.rs builds the image this
# way with podman, adding --pull=never (no registry: the base image is one it imported) and
# --network=host (the build's apt reaches Debian's mirror through the host's network); see
# docs/install.md's container section.
#
# Usage: docker/build-context.sh DIR [PACKAGE.deb]
#   DIR           created, or emptied of a previous src/ (nothing else in it is touched)
#   PACKAGE.deb   default: target/debian/libapache2-mod-lbmethod-rs_<version>_<arch>.deb
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'build-context: %s\n' "$*" >&2; }

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    say "usage: docker/build-context.sh DIR [PACKAGE.deb]"
    exit 2
fi
dir=$1
deb=${2:-}
if [ -z "$deb" ]; then
    version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$root/debian/changelog")
    deb=$root/target/debian/libapache2-mod-lbmethod-rs_${version}_$(dpkg --print-architecture).deb
fi
if [ ! -f "$deb" ]; then
    say "$deb not found: build it with scripts/build-deb.sh"
    exit 1
fi

mkdir -p "$dir"
rm -rf "$dir/src"
mkdir -p "$dir/src/target/debian"
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$dir/src" -xf -
cp "$deb" "$dir/src/target/debian/"
say "$dir/src holds the tree and $(basename "$deb")"
