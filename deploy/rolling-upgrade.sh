#!/usr/bin/env bash
# Upgrades a model across a fleet of wasm-hosts, one host at a time, with no failed request:
#
#   1. drain the host (POST /v2/repository/drain): its readiness turns 503, so the balancer
#      (nginx with deploy/nginx-health.sh, a Kubernetes Service) stops sending to it, while every
#      request that still arrives is served;
#   2. wait until it has had no request in flight and no new one for --quiet seconds;
#   3. load the new version (POST /v2/repository/models/MODEL/load): it boots beside the old one
#      and takes over at once;
#   4. check that the host serves the new version, undrain it, wait until it is ready and the
#      balancer sends to it again; then the next host.
#
#   deploy/rolling-upgrade.sh [options] MODEL HOST...
#
# HOST is PUBLIC or PUBLIC=ADMIN (host:port each): the inference address and, when the host runs
# with --admin-bind, its repository API address. The hosts need --model-control explicit, and
# with --admin-token the token (--token, or WASM_HOST_ADMIN_TOKEN).
#
#   --file PATH      upload this component as the new version (base64 in a `file:V/model.wasm`
#                    parameter); without it each host loads MODEL from its --model-repository
#                    (copy the new version folder there first)
#   --version V      the version to serve it as (needed with --file; checked either way)
#   --token T        the hosts' admin token
#   --refuse         drain by refusing new inference requests too (their connections are closed
#                    unanswered): for a balancer that does not poll readiness but retries on the
#                    next host, like open-source nginx with deploy/nginx.conf. Without it the
#                    drained host serves whatever still arrives (a Kubernetes Service polls
#                    readiness and drops the pod)
#   --quiet S        seconds without a new request that count as drained (default 2)
#   --drain-timeout S  give up (undrain, exit 1) if a host is not drained by then (default 60)
#   --settle S       after undrain, wait up to S seconds for traffic to return (default 5)
#
# Exits 0 when every host serves the new version; on the first failure it undrains the host it
# was on and exits 1, leaving the hosts after it untouched.
set -euo pipefail

file="" version="" token="${WASM_HOST_ADMIN_TOKEN:-}" quiet=2 drain_timeout=60 settle=5 refuse=0
args=()
while (($#)); do
    case "$1" in
        --file) file="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --token) token="$2"; shift 2 ;;
        --refuse) refuse=1; shift ;;
        --quiet) quiet="$2"; shift 2 ;;
        --drain-timeout) drain_timeout="$2"; shift 2 ;;
        --settle) settle="$2"; shift 2 ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        -*) echo "rolling-upgrade: unknown option $1" >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if ((${#args[@]} < 2)); then
    echo "usage: rolling-upgrade.sh [--file PATH --version V] [--token T] MODEL HOST[=ADMIN]..." >&2
    exit 2
fi
if [[ -n "$file" && -z "$version" ]]; then
    echo "rolling-upgrade: --file needs --version" >&2
    exit 2
fi
model="${args[0]}"
hosts=("${args[@]:1}")

log() { echo "rolling-upgrade: $(date +%T.%3N) $*" >&2; }

auth=()
[[ -n "$token" ]] && auth=(-H "Authorization: Bearer $token")

# POSTs to a host's repository API; prints the body; fails on a status other than 200.
admin() {
    local address="$1" path="$2" body="${3:-}" out status
    out="$(mktemp)"
    if [[ -n "$body" ]]; then
        status="$(curl -sS -o "$out" -w '%{http_code}' --max-time 600 "${auth[@]}" \
            -H 'Content-Type: application/json' --data-binary "@$body" "http://$address$path")" || status=000
    else
        status="$(curl -sS -o "$out" -w '%{http_code}' --max-time 60 "${auth[@]}" -X POST \
            "http://$address$path")" || status=000
    fi
    cat "$out"
    rm -f "$out"
    if [[ "$status" != 200 ]]; then
        echo >&2
        log "POST http://$address$path answered $status"
        return 1
    fi
}

field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p"; }

# Milliseconds on the wall clock (bash 5's EPOCHREALTIME: microseconds after a separator).
now_ms() { local t="${EPOCHREALTIME/[.,]/}"; echo $((t / 1000)); }

ready_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/health/ready" || true; }

# The request bodies, written once: the drain's, and the load's (the component in base64 under
# `file:V/model.wasm`).
drain_body="$(mktemp)" payload=""
cleanup() { rm -f "$drain_body" ${payload:+"$payload"}; }
trap cleanup EXIT
if ((refuse)); then echo '{"refuse":true}' >"$drain_body"; else echo '{}' >"$drain_body"; fi
if [[ -n "$file" ]]; then
    payload="$(mktemp)"
    { printf '{"parameters":{"file:%s/model.wasm":"' "$version"; base64 -w0 "$file"; printf '"}}'; } >"$payload"
fi

upgrade() {
    local public="$1" admin_address="$2" traffic requests in_flight last since now started
    log "$public: draining$( ((refuse)) && echo ", refusing new requests")"
    admin "$admin_address" /v2/repository/drain "$drain_body" >/dev/null || return 1
    [[ "$(ready_status "$public")" == 503 ]] || { log "$public: readiness is not 503 after the drain"; return 1; }

    # Drained: nothing in flight and no new request for $quiet seconds.
    started=$SECONDS last=-1 since="$(now_ms)"
    while :; do
        traffic="$(admin "$admin_address" /v2/repository/drain "$drain_body")" || return 1
        requests="$(field requests <<<"$traffic")" in_flight="$(field in_flight <<<"$traffic")"
        now="$(now_ms)"
        if [[ "$requests" != "$last" || "$in_flight" != 0 ]]; then
            last="$requests" since="$now"
        elif ((now - since >= quiet * 1000)); then
            break
        fi
        if ((SECONDS - started > drain_timeout)); then
            log "$public: still receiving requests after ${drain_timeout}s: is the balancer checking /v2/health/ready?"
            return 1
        fi
        sleep 0.2
    done
    log "$public: drained (no request for ${quiet}s, $requests served in all); loading $model${version:+ v$version}"

    if [[ -n "$payload" ]]; then
        admin "$admin_address" "/v2/repository/models/$model/load" "$payload" >/dev/null || return 1
    else
        admin "$admin_address" "/v2/repository/models/$model/load" >/dev/null || return 1
    fi
    local metadata
    metadata="$(curl -sS --max-time 5 "http://$public/v2/models/$model")" || return 1
    if [[ -n "$version" && "$metadata" != *"\"versions\":[\"$version\"]"* ]]; then
        log "$public: serves $metadata, not version $version"
        return 1
    fi
    log "$public: serves $model${version:+ v$version}; undraining"
    admin "$admin_address" /v2/repository/undrain >/dev/null || return 1

    started=$SECONDS
    until [[ "$(ready_status "$public")" == 200 ]]; do
        ((SECONDS - started > drain_timeout)) && { log "$public: not ready after undrain"; return 1; }
        sleep 0.2
    done
    # Back in the balancer: wait (a little) for traffic, so that two hosts are never out at once.
    started=$SECONDS
    while ((SECONDS - started < settle)); do
        # Undrain again changes nothing and answers the traffic.
        traffic="$(admin "$admin_address" /v2/repository/undrain)" || return 1
        if [[ "$(field requests <<<"$traffic")" != "$requests" ]]; then
            log "$public: receiving requests again"
            return 0
        fi
        sleep 0.2
    done
    log "$public: ready; no request arrived within ${settle}s (no traffic?)"
}

for host in "${hosts[@]}"; do
    public="${host%%=*}"
    admin_address="${host#*=}"
    if ! upgrade "$public" "$admin_address"; then
        log "$public: failed; undraining it and stopping (hosts after it are untouched)"
        admin "$admin_address" /v2/repository/undrain >/dev/null 2>&1 || true
        exit 1
    fi
done
log "done: ${#hosts[@]} hosts serve $model${version:+ v$version}"
