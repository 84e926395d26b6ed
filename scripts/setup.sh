#!/usr/bin/env bash
# Checks, and on Debian/Ubuntu installs, what building and testing mod_lbmethod_rs needs:
#   apache2        the httpd the module is loaded into (tests and the demo run /usr/sbin/apache2)
#   apache2-dev    apxs and the httpd/APR headers build.rs generates bindings from
#   libclang-dev   libclang, which bindgen loads (the clang program itself is not needed)
#   build-essential  cc, which links the module
#   curl, ca-certificates  to install Rust with rustup, and to try the demo
# and that cargo (Rust 1.88 or later, for edition 2024) is there.
#
# Quiet and quick when everything is present. Installs missing packages as root, through sudo
# when not root, or else prints the exact apt-get command and fails.
#
# The test suite needs more: the real programs its recipes name (LBRS_TEST_PACKAGES below,
# each with the reason), installed by `--tests`.
#
# Run it (`scripts/setup.sh`), or source it and call `lbrs_setup` (the other scripts do, so
# that the PATH it completes with ~/.cargo/bin carries over).
# Options: --no-rust  checks packages only (the Dockerfile installs Rust after them);
#          --tests    also the packages the test suite needs.

LBRS_APT_PACKAGES=(apache2 apache2-dev libclang-dev build-essential curl ca-certificates)
# What tests run for real, one line each:
LBRS_TEST_PACKAGES=(
    iproute2 # network namespaces for the tests that need several hosts
    valgrind # memcheck over apache2 with the module under load (tests/valgrind.rs)
    debhelper # tests/debian_package.rs builds the .deb (scripts/build-deb.sh: dh, debhelper compat 13)
    dpkg-dev  # dpkg-buildpackage, dpkg-shlibdeps and dpkg-deb for the same build
    lintian   # tests/debian_package.rs checks the built package is lintian-clean
    keepalived # the VRRP pair of tests/high_availability.rs (its service stays stopped: no config)
    dnsmasq-base # the test's DNS server (the binary only: no system service holding port 53)
    openssl  # tests/guide_tls.rs makes its certificate authority and certificates
    ssl-cert # the snakeoil certificate that stands in for the readers' own in docs' TLS examples (apache2 -t)
    haproxy # the L4 balancer sending the PROXY protocol in front of apache2 (tests/guide_upstream.rs runs its own)
    libapache2-mod-evasive # the per-client rate limiter docs/security.md recommends (tests/guide_security.rs); left disabled in /etc/apache2, see below
    mailutils # satisfies libapache2-mod-evasive's dependency on a mailx without pulling in a mail server
    nftables # nft -c checks the guide's firewall rules (parsed only, never loaded; the service stays disabled)
    jq # scripts/lbrs-maintenance.sh reads the status page's JSON (tests/guide_runbook.rs)
    prometheus # tests/prometheus.rs: promtool checks the metrics and monitoring/'s rules, and a real server scrapes Apache (its service is not started: policy-rc.d below)
    chromium # tests/status_page_browser.rs loads the status page in headless Chromium (DevTools over a pipe)
    podman # tests/container.rs builds the Dockerfile's image and runs it (a private store, in the test's namespaces)
    runc   # the runtime it runs containers with (crun refuses hybrid cgroup hierarchies)
    uidmap # newuidmap/newgidmap, which podman expects beside it
    netavark # the compose network of tests/container.rs (a bridge inside the test's namespace)
    aardvark-dns # that network's DNS: the balancer finds the app containers by service name
    iptables # netavark's port forwarding, inside the test's namespace only
    mmdebstrap # the test's debian:bookworm-slim stand-in (no registry to pull it from)
    podman-compose # runs docker/compose.yaml in tests/container.rs
)
LBRS_MIN_RUST_MINOR=88

lbrs_say() { printf 'setup: %s\n' "$*" >&2; }

# Runs a command as root: directly, through sudo, or not at all (returns 1).
lbrs_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

lbrs_missing_packages() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [ "$status" != "install ok installed" ]; then
            printf '%s\n' "$pkg"
        fi
    done
}

# Installs the packages named as arguments when missing.
lbrs_setup_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        # Not Debian/Ubuntu: check the tools, and say what to install.
        local ok=1
        command -v apxs >/dev/null 2>&1 || command -v apxs2 >/dev/null 2>&1 || {
            lbrs_say "apxs not found: install httpd's development package (RHEL family: httpd-devel)"
            ok=0
        }
        command -v cc >/dev/null 2>&1 || {
            lbrs_say "cc not found: install a C toolchain (RHEL family: gcc)"
            ok=0
        }
        command -v curl >/dev/null 2>&1 || {
            lbrs_say "curl not found: install curl"
            ok=0
        }
        lbrs_say "not a Debian/Ubuntu system: also make sure libclang is installed" \
            "(RHEL family: clang-devel) and see docs/install.md"
        [ "$ok" -eq 1 ]
        return
    fi

    local missing
    mapfile -t missing < <(lbrs_missing_packages "$@")
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi

    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        lbrs_say "missing packages: ${missing[*]}; not root and no sudo. Run as root:"
        printf '    apt-get update && apt-get install -y %s\n' "${missing[*]}" >&2
        return 1
    fi
    lbrs_say "installing ${missing[*]}"

    # Installing apache2 would start the system's own apache2 on port 80 where an init system
    # runs; the build, the tests and the demo run their own. Hold service starts off during
    # the install, unless the machine already has a policy of its own.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        if printf '#!/bin/sh\nexit 101\n' | lbrs_as_root tee "$policy" >/dev/null &&
            lbrs_as_root chmod 755 "$policy"; then
            made_policy=1
        fi
    fi

    local rc=0
    # The package lists must be fresh: installing from stale lists can fail on dependencies.
    lbrs_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [ "$rc" -eq 0 ]; then
        lbrs_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    fi
    if [ "$made_policy" -eq 1 ]; then
        lbrs_as_root rm -f "$policy"
    fi
    if [ "$rc" -ne 0 ]; then
        lbrs_say "apt-get failed (exit $rc). The command was:"
        printf '    apt-get update && apt-get install -y %s\n' "${missing[*]}" >&2
        return "$rc"
    fi
}

lbrs_setup_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        lbrs_say "cargo not found. Install Rust with rustup, then run this again:"
        # shellcheck disable=SC2016
        printf '    %s\n' \
            "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" \
            '. "$HOME/.cargo/env"' >&2
        return 1
    fi
    local minor
    minor=$(rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9][0-9]*\)\..*/\1/p')
    if [ -n "$minor" ] && [ "$minor" -lt "$LBRS_MIN_RUST_MINOR" ]; then
        lbrs_say "$(rustc --version) is too old (edition 2024 and let-chains need Rust 1.$LBRS_MIN_RUST_MINOR or later):"
        printf '    rustup update stable\n' >&2
        return 1
    fi
}

# Everything for building and the demo; `--no-rust` for the packages alone; `--tests` adds
# what the test suite runs.
lbrs_setup() {
    local packages=("${LBRS_APT_PACKAGES[@]}") rust=1 arg
    for arg in "$@"; do
        case "$arg" in
            --no-rust) rust=0 ;;
            --tests) packages+=("${LBRS_TEST_PACKAGES[@]}") ;;
            *) lbrs_say "unknown option $arg" && return 2 ;;
        esac
    done
    # Debian enables mod_evasive when it installs it, with its default thresholds (a client
    # that asks for one page a few times within a second is blocked): the system's apache2,
    # which tests/debian_package.rs runs, must not get it. Disabled only if this run installs it.
    local evasive_new
    evasive_new=$(lbrs_missing_packages libapache2-mod-evasive)
    lbrs_setup_packages "${packages[@]}" || return
    if [ -n "$evasive_new" ] && [ -e /etc/apache2/mods-enabled/evasive.load ] &&
        [ -z "$(lbrs_missing_packages libapache2-mod-evasive)" ]; then
        lbrs_as_root a2dismod -q evasive >/dev/null || lbrs_say "could not disable mod_evasive (a2dismod evasive)"
    fi
    if [ "$rust" -eq 1 ]; then
        lbrs_setup_rust || return
    fi
}

# Run directly (not sourced): do it and exit with its status.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    lbrs_setup "$@"
fi
