#!/usr/bin/env bash
# Benchmark of the hot endpoints end to end over HTTP: join, poll and hold,
# each driven by wrk against a release build of the API with real Redis and
# Postgres on this machine.
#
#   load/bench_hot.sh                          # 1 thread, 64 connections, 15 s each
#   THREADS=2 CONNS=128 DURATION=30 load/bench_hot.sh
#
# join: fresh buyers joining one sale's queue (JOINERS of them; once all
#       have joined, later requests are idempotent re-joins).
# poll: those buyers polling their place (waiting, position, ETA).
# hold: admitted buyers (through the real queue) holding one ticket each
#       request, with their access token and queue pass.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
ensure_services
ensure_rust
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

THREADS=${THREADS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-15}
PORT=${PORT:-18080}
JOINERS=${JOINERS:-300000}
HOLDERS=${HOLDERS:-5000}
export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
export LISTEN_ADDR=127.0.0.1:$PORT RUST_LOG=${RUST_LOG:-warn}
# One address (wrk) at tens of thousands of requests a second: limits off.
export RATE_LIMITS=off

cargo build --release --quiet -p flashsale
bin=target/release/flashsale
"$bin" migrate >/dev/null
"$bin" serve & api=$!
work=$(mktemp -d)
trap 'kill $api 2>/dev/null; wait $api 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

org=$("$bin" token --sub bench-organizer --role organizer)
new_sale() {
    curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
        -H 'Content-Type: application/json' -d "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
run() { # mode sale buyers-file
    echo "bench: $1, wrk -t$THREADS -c$CONNS -d${DURATION}s" >&2
    MODE=$1 SALE=$2 BUYERS=$3 wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        -s load/wrk/hot.lua "http://$LISTEN_ADDR" | tee "$work/$1.out" >&2
    grep '^RESULT' "$work/$1.out"
}

# Join and poll: a sale whose queue nobody is released from (no releaser runs).
queue_sale=$(new_sale '{"name":"queue benchmark","zones":[{"code":"A","capacity":1000}]}')
"$bin" token --sub "joiner-$queue_sale" --count "$JOINERS" > "$work/joiners"
run join "$queue_sale" "$work/joiners"
head -n 50000 "$work/joiners" > "$work/pollers"
run poll "$queue_sale" "$work/pollers"

# Hold: admitted buyers with passes, stock and limits that never run out.
hold_sale=$(new_sale '{"name":"hold benchmark","zones":[{"code":"A","capacity":10000000}],"per_user_limit":100,"hold_ttl_seconds":3600,"pass_ttl_seconds":3600,"release_rate":100000,"release_interval_ms":100}')
"$bin" prepare-buyers --sale "$hold_sale" --count "$HOLDERS" --prefix "holder-$hold_sale" --out "$work/holders"
run hold "$hold_sale" "$work/holders"

curl -sf "http://$LISTEN_ADDR/v1/sales/$hold_sale" | python3 -c '
import json, sys
z = json.load(sys.stdin)["zones"][0]
print("hold sale after: capacity %d, available %d, so %d tickets held" % (z["capacity"], z["available"], z["capacity"] - z["available"]))'
echo "machine: $(nproc) cores, $(awk "/MemTotal/ {printf \"%.0f GiB\", \$2/1048576}" /proc/meminfo), $(lscpu | sed -n "s/^Model name: *//p")" >&2
