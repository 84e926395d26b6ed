#!/usr/bin/env bash
# The runtime image's one build step (the Dockerfile's RUN, with this tree mounted): installs
# apache2 and the package scripts/build-deb.sh built, then sets Apache up as the image runs it:
#   - mod_proxy_http and mod_lbmethod_rs enabled (a2enmod; lbmethod_rs brings proxy_balancer);
#   - one site, httpd-conf/example.conf, with its five members pointed at small demo backends
#     that the same Apache serves on 127.0.0.1:8081-8085 (/var/www/lbmethod-rs-demo/app1-5);
#     Debian's default site disabled;
#   - ports.conf: Listen 80 only;
#   - logs to the container's output: the error log to stderr, the access log to stdout
#     (without the health check's requests);
#   - a global ServerName (localhost), so that Apache does not warn that it guessed one.
# tests/debian_package.rs runs it on this machine's apache2 too, on free ports, then puts
# everything back:
#   LBRS_IMAGE_LISTEN          what ports.conf listens on (default 80)
#   LBRS_IMAGE_BACKEND_PORTS   the five demo backends' ports (default "8081 8082 8083 8084 8085")
#
# Usage: docker/setup-image.sh [--image] [PACKAGE.deb]
#   --image       also drop apt's package lists, which only weigh on an image
#   PACKAGE.deb   default: target/debian/libapache2-mod-lbmethod-rs_<version>_<arch>.deb
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

say() { printf 'setup-image: %s\n' "$*" >&2; }

image=0 deb=
for arg in "$@"; do
    case "$arg" in
        --image) image=1 ;;
        -*) say "unknown option $arg" && exit 2 ;;
        *) deb=$arg ;;
    esac
done
if [ -z "$deb" ]; then
    # The version from debian/changelog's first line (dpkg-dev is not in the runtime image).
    version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
    deb=target/debian/libapache2-mod-lbmethod-rs_${version}_$(dpkg --print-architecture).deb
fi
if [ ! -f "$deb" ]; then
    say "$deb not found: build it with scripts/build-deb.sh"
    exit 1
fi
case "$deb" in
    /*) ;;
    *) deb=$root/$deb ;;
esac

listen=${LBRS_IMAGE_LISTEN:-80}
port=${listen##*:}
read -r -a backend_ports <<<"${LBRS_IMAGE_BACKEND_PORTS:-8081 8082 8083 8084 8085}"
if [ "${#backend_ports[@]}" -ne 5 ]; then
    say "LBRS_IMAGE_BACKEND_PORTS must name five ports"
    exit 2
fi

# apache2 and the package in one apt-get run, through the same function as every other
# install (service starts held off, fresh package lists). A file name is never an installed
# package's name, so the package file is always handed to apt-get, which installs it with
# whatever it depends on.
lbrs_setup_packages apache2 "$deb"

a2enmod -q proxy_http lbmethod_rs
a2dissite -q 000-default

printf '# The container listens here only (docker/setup-image.sh).\nListen %s\n' "$listen" \
    >/etc/apache2/ports.conf

# The example site. Its members (10.0.0.11-14 and 10.0.1.11, port 8080) become the demo
# backends, and it answers for any host name on the listening port.
members=(10.0.0.11 10.0.0.12 10.0.0.13 10.0.0.14 10.0.1.11)
rewrite=(-e "s#<VirtualHost \*:80>#<VirtualHost *:$port>#" -e 's#ServerName app\.example\.com#ServerName localhost#')
for i in "${!members[@]}"; do
    rewrite+=(-e "s#http://${members[$i]//./\\.}:8080#http://127.0.0.1:${backend_ports[$i]}#")
done
sed "${rewrite[@]}" httpd-conf/example.conf >/etc/apache2/sites-available/lbmethod-rs-example.conf

demo=/etc/apache2/sites-available/lbmethod-rs-demo-backends.conf
printf '# Demo backends for the example site: each answers its own name.\n' >"$demo"
for i in "${!backend_ports[@]}"; do
    name=app$((i + 1))
    mkdir -p "/var/www/lbmethod-rs-demo/$name"
    printf '%s\n' "$name" >"/var/www/lbmethod-rs-demo/$name/index.html"
    printf 'Listen 127.0.0.1:%s\n<VirtualHost 127.0.0.1:%s>\n    DocumentRoot /var/www/lbmethod-rs-demo/%s\n</VirtualHost>\n' \
        "${backend_ports[$i]}" "${backend_ports[$i]}" "$name" >>"$demo"
done
a2ensite -q lbmethod-rs-demo-backends lbmethod-rs-example

# Logs to the container's output. Sites without log directives of their own (both above)
# use these. /proc/self/fd/N is opened by Apache's parent process, so it is Apache's own
# stdout and stderr, which its children inherit.
cat >/etc/apache2/conf-available/lbmethod-rs-container-logs.conf <<'EOF'
# The container's logs go to its output (docker logs): errors to stderr, requests to stdout,
# but for the health check's (apache2-healthcheck, every few seconds under Kubernetes).
ErrorLog /proc/self/fd/2
SetEnvIf User-Agent "^apache2-healthcheck$" lbrs_healthcheck
CustomLog /proc/self/fd/1 vhost_combined env=!lbrs_healthcheck
EOF
# A server name of its own, so that Apache does not guess one (AH00558 at every start). The
# sites name theirs; a mounted site without one answers as localhost.
cat >/etc/apache2/conf-available/lbmethod-rs-container-servername.conf <<'EOF'
# The server's name, instead of Apache's guess from the container's host name (AH00558).
ServerName localhost
EOF
a2disconf -q other-vhosts-access-log
a2enconf -q lbmethod-rs-container-logs lbmethod-rs-container-servername

apache2ctl configtest

if [ "$image" -eq 1 ]; then
    rm -rf /var/lib/apt/lists/*
fi
say "apache2 is set up; start it with docker/entrypoint.sh"
