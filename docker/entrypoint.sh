#!/bin/sh
# The container's command (the Dockerfile's ENTRYPOINT, installed as apache2-foreground):
# Apache itself runs as process 1, in the foreground. `docker stop` signals process 1, and
# the image's STOPSIGNAL is SIGWINCH, Apache's graceful stop: it closes its listeners, lets
# the requests in flight finish, then exits. (apache2ctl would leave a shell as process 1,
# which passes no signal on.)
#
# It does what apache2ctl does before starting: read /etc/apache2/envvars (run user, pid
# file, run, lock and log directories) and create the run and lock directories when missing.
# Extra arguments go to apache2, for example `-e debug`.
set -eu

APACHE_CONFDIR=${APACHE_CONFDIR:-/etc/apache2}
# shellcheck source=/dev/null
. "$APACHE_CONFDIR/envvars"

# Created by apache2ctl the same way: owned by root, except what the run user writes to.
if [ ! -d "$APACHE_RUN_DIR" ]; then
    mkdir -p "$APACHE_RUN_DIR"
fi
for dir in "$APACHE_RUN_DIR/socks" "$APACHE_LOCK_DIR"; do
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        chown "$APACHE_RUN_USER" "$dir"
    fi
done

# As apache2ctl: a configuration directory other than the default is named to apache2.
if [ "$APACHE_CONFDIR" != /etc/apache2 ]; then
    set -- -d "$APACHE_CONFDIR" "$@"
fi
exec "${APACHE_HTTPD:-/usr/sbin/apache2}" -DFOREGROUND "$@"
