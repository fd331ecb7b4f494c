#!/usr/bin/env bash
# The API's instructions per request (user space), counted by callgrind: a
# figure the machine's speed does not move, for A/B comparisons of builds.
#
#   load/instructions.sh poll                 # or hold
#   BIN=/path/to/other/flashsale load/instructions.sh hold
#   KEEP=/tmp/cg load/instructions.sh poll    # keep callgrind's output there
#                                             # (callgrind_annotate reads it)
#
# Starts its own redis-server and the API (release build, or BIN) under
# valgrind with instrumentation off; makes a sale and 2,000 buyers (hold:
# admitted, with passes; poll: waiting in the queue); warms up for 10 s so
# every token and pass is verified and cached; then counts the instructions
# of 10 s of wrk traffic (1 thread, 8 connections) and divides by the
# requests wrk completed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust
MODE=${1:-poll}
[[ $MODE == poll || $MODE == hold ]] || { echo "instructions: mode is poll or hold" >&2; exit 2; }
for tool in valgrind callgrind_control wrk redis-server redis-cli; do
    command -v "$tool" >/dev/null ||
        { echo "instructions: $tool is missing (apt-get install valgrind wrk redis-server redis-tools)" >&2; exit 1; }
done

export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
# A published secret and a pass key shared through Redis: development only.
export FLASHSALE_ENV=development
export RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off TOKIO_WORKER_THREADS=1 REDIS_POOL_SIZE=1
if [[ -z ${BIN:-} ]]; then
    cargo build --release --quiet -p flashsale
    BIN=target/release/flashsale
fi
rport=$(free_port) aport=$(free_port)
work=$(mktemp -d)
trap 'kill ${redis_pid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
start_private_redis "$rport" "$work" --appendonly no
export REDIS_URL=redis://127.0.0.1:$rport LISTEN_ADDR=127.0.0.1:$aport
"$BIN" migrate >/dev/null
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    "$BIN" serve 2>"$work/valgrind.log" & api=$!
trap 'kill $api $redis_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$aport") 2>/dev/null && break; sleep 0.2; done

org=$("$BIN" token --sub instructions-organizer --role organizer)
if [[ $MODE == hold ]]; then
    body='{"name":"instructions","zones":[{"code":"A","capacity":10000000}],"per_user_limit":100,"hold_ttl_seconds":3600,"pass_ttl_seconds":3600,"release_rate":100000,"release_interval_ms":100}'
else
    body='{"name":"instructions","zones":[{"code":"A","capacity":1000}]}'
fi
sale=$(curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
    -H 'Content-Type: application/json' -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
drive() { # mode seconds
    MODE=$1 SALE=$sale BUYERS=$work/buyers wrk -t1 -c8 -d"$2s" -s load/wrk/hot.lua "http://$LISTEN_ADDR"
}
if [[ $MODE == hold ]]; then
    "$BIN" prepare-buyers --sale "$sale" --count 2000 --prefix "instructions-$sale" --out "$work/buyers" >/dev/null 2>&1
else
    "$BIN" token --sub "instructions-$sale" --count 2000 >"$work/buyers"
    drive join 10 >/dev/null
fi
drive "$MODE" 10 >/dev/null # warm-up: every token and pass verified and cached
callgrind_control -z "$api" >/dev/null 2>&1
callgrind_control -i on "$api" >/dev/null 2>&1
requests=$(drive "$MODE" 10 | awk '/^REQUESTS/ {print $2}')
callgrind_control -i off "$api" >/dev/null 2>&1
callgrind_control -d "$api" >/dev/null 2>&1
# The dump is complete once its totals line is written.
for _ in $(seq 1 100); do grep -qs '^totals:' "$work"/callgrind.out.* && break; sleep 0.2; done
total=$(awk '/^totals:/ {s += $2} END {print s + 0}' "$work"/callgrind.out.*)
[[ ${requests:-0} -gt 0 && $total -gt 0 ]] || { echo "instructions: nothing counted (see $work/valgrind.log)" >&2; exit 1; }
if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP" && cp "$work"/callgrind.out.* "$KEEP"/
fi
echo "$MODE: $requests requests, $total instructions, $((total / requests)) a request ($(basename "$BIN"))"
