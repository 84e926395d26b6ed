#!/usr/bin/env bash
# Builds httpd from the release sources the main distributions ship, builds the module against
# each one (its own apxs and headers), and runs the integration smoke test (tests/smoke.rs:
# every method, the status page, a graceful restart) on that httpd. Then it checks that the
# module built against Debian's newer headers refuses to start in that older httpd (with one
# line naming both versions), and that the first version's build runs in Debian's apache2.
#
#   scripts/compat.sh                 # 2.4.37 (RHEL 8), the oldest supported
#   scripts/compat.sh 2.4.52 2.4.62   # the releases named
#   scripts/compat.sh all             # 2.4.37 2.4.52 2.4.58 2.4.62
#
# Debian's own apache2 (2.4.71 on Debian 12) is what scripts/test.sh runs everything against.
#
# The sources are `git archive`s of httpd's release tags, httpd-VERSION.tar.gz, found in
# $LBRS_HTTPD_SOURCES, else in shared/httpd next to this checkout or next to any directory above
# it (../shared/httpd in the project's layout), else in /work/shared/httpd. With
# LBRS_COMPAT_OPTIONAL=1 (scripts/test.sh sets it), a release whose source is nowhere is skipped
# with a warning instead of failing. Each httpd is built once
# into target/compat/httpd-VERSION (about 1.5 minutes on 2 cores) and reused by later runs; the
# module and the test binaries for it are built in target/compat/build-VERSION, so that they
# never mix with the build against Debian's headers.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

ALL_VERSIONS=(2.4.37 2.4.52 2.4.58 2.4.62)
# To build httpd from a git tree: autoconf and libtool for buildconf, autotools-dev for
# config.guess/config.sub, APR's headers and tools, expat for apr-util, both PCREs (releases
# before 2.4.53 take PCRE 1).
COMPAT_PACKAGES=(autoconf libtool autotools-dev libapr1-dev libaprutil1-dev libexpat1-dev libpcre3-dev libpcre2-dev)

# The directory that holds the release sources.
find_sources() {
    if [ -n "${LBRS_HTTPD_SOURCES:-}" ]; then
        printf '%s\n' "$LBRS_HTTPD_SOURCES"
        return
    fi
    local dir=$root
    while [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        if compgen -G "$dir/shared/httpd/httpd-2.4.*.tar.gz" >/dev/null; then
            printf '%s\n' "$dir/shared/httpd"
            return
        fi
    done
    printf '%s\n' /work/shared/httpd
}
sources=$(find_sources)
versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=(2.4.37)
[ "${versions[*]}" != all ] || versions=("${ALL_VERSIONS[@]}")

say() { printf 'compat: %s\n' "$*" >&2; }

lbrs_setup --tests
lbrs_setup_packages "${COMPAT_PACKAGES[@]}"

# Builds httpd VERSION into $1 unless a finished build is there.
build_httpd() {
    local version=$1 prefix=$2 tarball="$sources/httpd-$1.tar.gz"
    if [ -x "$prefix/bin/httpd" ] && [ -f "$prefix/.complete" ]; then
        return 0
    fi
    if [ ! -f "$tarball" ]; then
        say "no source for httpd $version: $tarball is missing (set LBRS_HTTPD_SOURCES)"
        return 2
    fi
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/lbrs-httpd-$version.XXXXXX")
    # The build tree is thrown away whatever happens; the result is in $prefix.
    trap 'rm -rf "$work"' RETURN
    say "building httpd $version into $prefix (about 1.5 minutes)"
    tar -xzf "$tarball" -C "$work"
    local tree
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    local pcre=/usr/bin/pcre2-config
    # Releases before 2.4.53 only know PCRE 1.
    if [ "$(printf '%s\n' "$version" 2.4.53 | sort -V | head -n 1)" != 2.4.53 ]; then
        pcre=/usr/bin/pcre-config
    fi
    (
        cd "$tree"
        ./buildconf --with-apr=/usr/share/apr-1.0 --with-apr-util=/usr/share/apr-1.0 >build.log 2>&1
        cp /usr/share/misc/config.guess /usr/share/misc/config.sub build/
        ./configure --prefix="$prefix" --with-apr=/usr/bin/apr-1-config --with-apr-util=/usr/bin/apu-1-config \
            --with-pcre="$pcre" --enable-mpms-shared=all \
            --enable-mods-shared="most proxy proxy_http proxy_balancer proxy_hcheck slotmem_shm lbmethod_byrequests lbmethod_bybusyness status" \
            >>build.log 2>&1
        make -j"$(nproc)" >>build.log 2>&1
        make install >>build.log 2>&1
    ) || {
        say "building httpd $version failed; the end of its log:"
        tail -n 30 "$tree/build.log" >&2
        return 1
    }
    touch "$prefix/.complete"
}

# Debian's build, to load into the older httpds: it must refuse to start there.
cargo build --lib -p mod_lbmethod_rs
debian_module=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/libmod_lbmethod_rs.so

failed=()
for version in "${versions[@]}"; do
    prefix="$root/target/compat/httpd-$version"
    build="$root/target/compat/build-$version"
    start=$SECONDS
    built=0
    build_httpd "$version" "$prefix" || built=$?
    if [ "$built" -eq 2 ] && [ "${LBRS_COMPAT_OPTIONAL:-0}" = 1 ]; then
        say "WARNING: httpd $version skipped: no source (this checkout has no shared/httpd beside it)"
        continue
    elif [ "$built" -ne 0 ]; then
        failed+=("$version (httpd build)")
        continue
    fi
    say "httpd $version: building the module against $prefix/bin/apxs and running tests/smoke.rs"
    # APXS points build.rs at this httpd's headers; the harness runs this httpd, with its
    # modules, and loads the module just built.
    if APXS="$prefix/bin/apxs" CARGO_TARGET_DIR="$build" cargo build --lib -p mod_lbmethod_rs &&
        APXS="$prefix/bin/apxs" CARGO_TARGET_DIR="$build" \
            LBRS_APACHE2="$prefix/bin/httpd" LBRS_MODULES_DIR="$prefix/modules" \
            LBRS_MODULE="$build/debug/libmod_lbmethod_rs.so" \
            cargo test --test smoke &&
        say "httpd $version: Debian's build must refuse to start in it" &&
        CARGO_TARGET_DIR="$build" LBRS_APACHE2="$prefix/bin/httpd" LBRS_MODULES_DIR="$prefix/modules" \
            LBRS_FOREIGN_MODULE="$debian_module" cargo test --test smoke refuses &&
        { [ "$version" != "${versions[0]}" ] || {
            # The other way round is httpd's module ABI promise: an older build runs in a newer
            # httpd as long as the shared records it reads have the size it was built for,
            # which the module checks at startup.
            say "httpd $version: its build must also run in Debian's apache2"
            CARGO_TARGET_DIR="$build" LBRS_MODULE="$build/debug/libmod_lbmethod_rs.so" \
                cargo test --test smoke every_method
        }; }; then
        say "httpd $version: passed in $((SECONDS - start)) s"
    else
        failed+=("$version")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    say "failed: ${failed[*]}"
    exit 1
fi
say "all passed: ${versions[*]}"
