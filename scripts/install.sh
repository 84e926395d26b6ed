#!/usr/bin/env bash
# Builds mod_lbmethod_rs in release mode and installs it into the httpd that apxs describes:
#   $(apxs -q LIBEXECDIR)/mod_lbmethod_rs.so
# and, on Debian/Ubuntu, httpd-conf/lbmethod_rs.load and lbmethod_rs.conf into
# /etc/apache2/mods-available/ so that `a2enmod lbmethod_rs` works. It enables nothing and
# restarts nothing: it prints the next steps.
#
# Run it as the user who builds (it uses sudo for the copies when not root), or as root.
# Environment: APXS names the apxs to ask (default: apxs, then apxs2), as for the build.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# The Debian package owns these files when it is installed; copying over them would leave dpkg
# with files it does not know, which a later purge deletes.
if command -v dpkg-query >/dev/null 2>&1 &&
    [ "$(dpkg-query -W -f='${Status}' libapache2-mod-lbmethod-rs 2>/dev/null)" = "install ok installed" ]; then
    echo "install: the package libapache2-mod-lbmethod-rs is installed: upgrade it instead" \
        "(scripts/build-deb.sh, then apt-get install; see docs/install.md)" >&2
    exit 1
fi
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
lbrs_setup

apxs=${APXS:-}
if [ -z "$apxs" ]; then
    apxs=$(command -v apxs || command -v apxs2 || true)
fi
if [ -z "$apxs" ]; then
    echo "install: apxs not found; install httpd's development package or set APXS" >&2
    exit 1
fi
libexecdir=$("$apxs" -q LIBEXECDIR)
if [ ! -d "$libexecdir" ]; then
    echo "install: '$apxs -q LIBEXECDIR' answered '$libexecdir', which is not a directory" >&2
    exit 1
fi

echo "install: building (cargo build --release)..." >&2
cargo build --release

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
built="${target_dir:-$root/target}/release/libmod_lbmethod_rs.so"
if [ ! -f "$built" ]; then
    echo "install: $built was not built" >&2
    exit 1
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install: not root and no sudo; run this script as root" >&2
        exit 1
    fi
}

module="$libexecdir/mod_lbmethod_rs.so"
# Copy beside the target, then rename over it: a running httpd keeps the file it mapped
# intact, and the next (graceful) restart loads the new one.
as_root install -m 0644 "$built" "$module.new"
as_root mv -f "$module.new" "$module"
echo "install: installed $module"

mods_available=/etc/apache2/mods-available
if [ -d "$mods_available" ]; then
    # The shipped .load names Debian's module directory; write the one apxs gave.
    sed "s#/usr/lib/apache2/modules/mod_lbmethod_rs.so#$module#" httpd-conf/lbmethod_rs.load |
        as_root tee "$mods_available/lbmethod_rs.load" >/dev/null
    as_root install -m 0644 httpd-conf/lbmethod_rs.conf "$mods_available/lbmethod_rs.conf"
    as_root chmod 0644 "$mods_available/lbmethod_rs.load"
    echo "install: installed $mods_available/lbmethod_rs.load and lbmethod_rs.conf"
    cat <<EOF

Next steps (nothing was enabled or restarted):
  1. Enable the module (a2enmod also enables proxy and proxy_balancer):
       a2enmod proxy_http lbmethod_rs
  2. Use it in a balancer, for example (a whole site: httpd-conf/example.conf):
       <Proxy "balancer://app">
           BalancerMember "http://10.0.0.11:8080" loadfactor=1
           BalancerMember "http://10.0.0.12:8080" loadfactor=2
           ProxySet lbmethod=byweight
       </Proxy>
       ProxyPass "/lb-status" "!"
       ProxyPass "/" "balancer://app/"
     The status page is at /lb-status (Require local; see mods-available/lbmethod_rs.conf).
  3. Check the configuration:
       apachectl -t
  4. Apply it (a graceful restart keeps the module's counters):
       systemctl reload apache2      (or: systemctl start apache2 if it is not running)
EOF
else
    cat <<EOF

Next steps (nothing was enabled or restarted):
  1. Load the module after mod_proxy and mod_proxy_balancer, in httpd.conf or a file it
     includes (RHEL family: /etc/httpd/conf.modules.d/):
       LoadModule lbmethod_rs_module $module
  2. Add the status page, and a balancer with ProxySet lbmethod=byweight: see
     httpd-conf/lbmethod_rs.conf and httpd-conf/example.conf.
  3. Check the configuration:
       apachectl -t
  4. Apply it with a graceful restart:
       apachectl -k graceful       (systemd: systemctl reload httpd)
EOF
fi
