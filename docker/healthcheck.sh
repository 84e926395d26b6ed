#!/bin/bash
# The container's HEALTHCHECK (installed as apache2-healthcheck): healthy when Apache answers
# 200 for the module's status page on the local port. That needs Apache up, accepting and
# serving, and mod_lbmethod_rs loaded. The page allows local requests only, as this one is.
# bash's /dev/tcp, so the image needs no HTTP client.
# Environment: LBRS_HEALTH_PORT, the port Apache listens on (default 80).
set -u
port=${LBRS_HEALTH_PORT:-80}

exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
# Its User-Agent keeps it out of the image's access log (docker/setup-image.sh).
printf 'GET /lb-status?format=json HTTP/1.1\r\nHost: localhost\r\nUser-Agent: apache2-healthcheck\r\nConnection: close\r\n\r\n' >&3
status_line=
IFS= read -r -t 5 status_line <&3 || true
exec 3<&-
case "$status_line" in
    "HTTP/1.1 200 "*) exit 0 ;;
    *)
        echo "health: /lb-status answered '${status_line%$'\r'}'" >&2
        exit 1
        ;;
esac
