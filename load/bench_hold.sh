#!/usr/bin/env bash
# Benchmark of the hold path, end to end over HTTP: a release build of the
# API, real Redis and Postgres, wrk posting one-ticket holds for many buyers.
#
#   load/bench_hold.sh                 # 1 thread, 64 connections, 15 s
#   THREADS=2 CONNS=128 SECONDS_=30 load/bench_hold.sh
#
# Prints wrk's report (throughput, latency percentiles) and checks afterwards
# that the zone's stock adds up: capacity = available + held + confirmed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
ensure_services
ensure_rust
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

THREADS=${THREADS:-1}
CONNS=${CONNS:-64}
DURATION=${SECONDS_:-15}
PORT=${PORT:-18080}
BUYERS=${BUYERS:-5000}
export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
export LISTEN_ADDR=127.0.0.1:$PORT RUST_LOG=${RUST_LOG:-warn}

cargo build --release --quiet -p flashsale
bin=target/release/flashsale
"$bin" migrate >/dev/null
"$bin" serve & api=$!
work=$(mktemp -d)
trap 'kill $api 2>/dev/null; wait $api 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

org=$("$bin" token --sub bench-organizer --role organizer)
sale=$(curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
  -H 'Content-Type: application/json' \
  -d '{"name":"hold benchmark","zones":[{"code":"A","capacity":10000000}],"per_user_limit":100,"hold_ttl_seconds":3600}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin" token --sub "bench-$sale" --count "$BUYERS" > "$work/tokens"

echo "bench: sale $sale, $BUYERS buyers, wrk -t$THREADS -c$CONNS -d${DURATION}s, $(nproc) cores" >&2
SALE=$sale TOKENS=$work/tokens wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
  -s load/wrk/hold.lua "http://$LISTEN_ADDR"

curl -sf "http://$LISTEN_ADDR/v1/sales/$sale" | python3 -c '
import json, sys
z = json.load(sys.stdin)["zones"][0]
print("after: capacity %d, available %d, so %d tickets held" % (z["capacity"], z["available"], z["capacity"] - z["available"]))'
