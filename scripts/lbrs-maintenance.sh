#!/usr/bin/env bash
# Takes one member of a balancer out of service and back, through balancer-manager, for a
# deployment or maintenance; see docs/runbook.md.
#
#   lbrs-maintenance.sh drain  BALANCER MEMBER [options]   stop new requests, wait for the ones in flight
#   lbrs-maintenance.sh enable BALANCER MEMBER [options]   back into service, watch the slow-start ramp
#   lbrs-maintenance.sh status BALANCER MEMBER [options]   one line: status, in flight, weight, ramp
#
# BALANCER is the balancer's name, with or without "balancer://" (app, balancer://app).
# MEMBER is the member's URL as the status page names it (http://10.0.0.11:8080).
# Options:
#   --url URL        the Apache serving balancer-manager and the status page
#                    (default http://127.0.0.1/)
#   --manager PATH   balancer-manager's path (default balancer-manager)
#   --status PATH    the status page's path (default lb-status)
#   --wait SECONDS   how long drain waits for the requests in flight to end, and enable
#                    watches the ramp (default 300; 0: do not wait)
#   --cacert FILE    over HTTPS: the CA certificate that signed Apache's certificate
#   --resolve HOST:PORT:ADDRESS
#                    send HOST:PORT to ADDRESS (one node of a pair by its own address,
#                    with the name its certificate carries), as curl's --resolve
#
# Exit status: 0 done; 1 drain timed out with requests still in flight (the member stays
# draining), or a change was not applied; 2 usage or lookup error.
# Needs bash, curl and jq. Run it where balancer-manager's `Require` admits you (the server
# itself by default).
set -euo pipefail

die() {
    printf 'lbrs-maintenance: %s\n' "$1" >&2
    exit "${2:-2}"
}
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 3 ] || usage
action=$1 balancer=${2#balancer://} member=$3
shift 3
url=http://127.0.0.1/ manager=balancer-manager status_path=lb-status wait=300
curl_options=()
# Every option as given, for the next step the script prints (quoted for a shell).
options_given=""
for option in "$@"; do options_given+=" $(printf '%q' "$option")"; done
while [ $# -gt 0 ]; do
    case "$1" in
        --url) url=${2:?--url needs a value}; shift 2 ;;
        --manager) manager=${2:?--manager needs a value}; shift 2 ;;
        --status) status_path=${2:?--status needs a value}; shift 2 ;;
        --wait) wait=${2:?--wait needs a value}; shift 2 ;;
        --cacert) curl_options+=(--cacert "${2:?--cacert needs a file}"); shift 2 ;;
        --resolve) curl_options+=(--resolve "${2:?--resolve needs HOST:PORT:ADDRESS}"); shift 2 ;;
        *) usage ;;
    esac
done
case "$action" in drain | enable | status) ;; *) usage ;; esac
[[ "$wait" =~ ^[0-9]+$ ]] || die "--wait takes whole seconds, not '$wait'"
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"
url=${url%/}/
manager=${manager#/}
status_path=${status_path#/}

# The member's entry on the status page, as compact JSON, with the balancer's slow start.
member_json() {
    local page
    page=$(curl -fsS --max-time 10 "${curl_options[@]}" "${url}${status_path}?format=json") ||
        die "cannot read the status page ${url}${status_path}"
    jq -ce --arg b "balancer://$balancer" --arg m "$member" '
        [.balancers[] | select(.name == $b) as $bal | $bal.members[] | select(.name == $m)
         | . + {slow_start_seconds: $bal.slow_start_seconds}] | first' <<<"$page" ||
        die "no member $member in balancer://$balancer on ${url}${status_path}"
}

field() { jq -r "$1" <<<"$2"; }

describe() {
    local m=$1 ramp
    ramp=$(field 'if .slow_start_progress == null then "-" else "\(.slow_start_progress * 100 | floor)%" end' "$m")
    printf 'balancer://%s %s status=%s inflight=%s selected=%s weight=%s/%s ramp=%s\n' \
        "$balancer" "$member" "$(field .status "$m")" "$(field .inflight "$m")" \
        "$(field .selected "$m")" "$(field .effective_weight "$m")" "$(field .loadfactor "$m")" "$ramp"
}

# Sets balancer-manager's form fields on the member, as its page does: with the balancer's
# nonce and a Referer naming this host (without both, httpd ignores the change).
manage() {
    local page nonce
    page=$(curl -fsS --max-time 10 "${curl_options[@]}" "${url}${manager}") ||
        die "cannot read balancer-manager at ${url}${manager} (is it enabled, and does Require admit you?)"
    nonce=$(sed -n "s/.*?b=${balancer}&amp;nonce=\([0-9a-fA-F-]*\).*/\1/p" <<<"$page" | head -n 1)
    [ -n "$nonce" ] || die "balancer://$balancer is not on ${url}${manager}"
    local form=(--data-urlencode "b=$balancer" --data-urlencode "w=$member" --data-urlencode "nonce=$nonce")
    local field
    for field in "$@"; do
        form+=(--data-urlencode "$field")
    done
    curl -fsS --max-time 10 "${curl_options[@]}" -o /dev/null -H "Referer: ${url}${manager}" "${form[@]}" "${url}${manager}" ||
        die "balancer-manager refused the change" 1
}

has_flag() { jq -e --arg f "$1" '.flags | index($f) != null' <<<"$2" >/dev/null; }

case "$action" in
status)
    m=$(member_json)
    describe "$m"
    ;;

drain)
    m=$(member_json)
    manage w_status_N=1
    m=$(member_json)
    has_flag drain "$m" || die "the drain flag did not stick: $(describe "$m")" 1
    say "draining: no new requests (sticky sessions still reach it)"
    deadline=$((SECONDS + wait))
    last=-1
    while :; do
        m=$(member_json)
        inflight=$(field .inflight "$m")
        if [ "$inflight" -eq 0 ]; then
            say "drained: nothing in flight; deploy now, then: $0 enable $balancer $member${options_given}"
            break
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "still $inflight in flight after ${wait}s; the member stays draining"
            describe "$m"
            exit 1
        fi
        if [ "$inflight" -ne "$last" ]; then
            say "waiting: $inflight in flight"
            last=$inflight
        fi
        sleep 0.5
    done
    describe "$m"
    ;;

enable)
    m=$(member_json)
    manage w_status_N=0 w_status_D=0
    m=$(member_json)
    if has_flag drain "$m" || has_flag disabled "$m"; then
        die "the member is still out of service: $(describe "$m")" 1
    fi
    say "enabled: $(field .status "$m")"
    if [ "$(field .slow_start_seconds "$m")" = null ] || [ "$wait" -eq 0 ]; then
        describe "$m"
        exit 0
    fi
    # The ramp starts at the member's first pick after it is back: watch it start and end.
    deadline=$((SECONDS + wait))
    started=0
    last=
    while [ "$SECONDS" -lt "$deadline" ]; do
        m=$(member_json)
        progress=$(field .slow_start_progress "$m")
        if [ "$progress" != null ]; then
            started=1
            now="ramp $(field '.slow_start_progress * 100 | floor' "$m")%, weight $(field .effective_weight "$m") of $(field .loadfactor "$m")"
            [ "$now" = "$last" ] || say "$now"
            last=$now
        elif [ "$started" -eq 1 ]; then
            say "ramp done: at full weight"
            describe "$m"
            exit 0
        fi
        sleep 0.5
    done
    if [ "$started" -eq 0 ]; then
        say "no ramp seen within ${wait}s: it starts at the member's first request"
    else
        say "still ramping after ${wait}s"
    fi
    m=$(member_json)
    describe "$m"
    ;;
esac
