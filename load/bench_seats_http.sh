#!/usr/bin/env bash
# Holds a second through the API over HTTP, seated against general
# admission: wrk against a release build of the API with a private Redis and
# the Postgres of this machine, the hold endpoint only.
#
#   load/bench_seats_http.sh                  # 2 rounds, 6 s a run, 64 connections
#   ROUNDS=3 load/bench_seats_http.sh
#
# Ten zones hold 200,000 tickets: at 2 a hold, a run must stay under 100,000
# holds, which bounds DURATION (about 6 s at 15,000 holds a second).
#
# Each round runs, each on a fresh sale of ten zones (Z0..Z9, buyers spread
# over them), holds of 2: general admission (zones of 20,000), 2 exact
# seats (neighbours no other hold asks for), the best 2 seats, and 2 seats
# together (zones of 20,000 seats, 100 rows of 200). A
# run that sells a zone out, or is refused anything, fails the script. The
# ratio to the general-admission run of the same round is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
CONNS=${CONNS:-64}
PORT=${PORT:-18081}
HOLDERS=${HOLDERS:-20000}
bench_api_env "$PORT"

rdir=$(mktemp -d)
rport=$(free_port)
work=$(mktemp -d)
trap 'kill ${api:-} ${redis_pid:-} 2>/dev/null || true; wait ${api:-} ${redis_pid:-} 2>/dev/null || true; rm -rf "$rdir" "$work"' EXIT
start_private_redis "$rport" "$rdir" --appendonly no
export REDIS_URL=redis://127.0.0.1:$rport
cargo build --release --quiet -p flashsale --bin flashsale
bin=target/release/flashsale
"$bin" migrate >/dev/null
"$bin" serve & api=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
org=$("$bin" token --sub bench-organizer --role organizer)

rows=$(python3 -c 'import json; print(json.dumps({"rows": [{"row": "R%d" % i, "seats": 200} for i in range(100)]}))')
new_sale() { # seated (0|1)
    local zones
    if [[ $1 == 1 ]]; then
        zones=$(python3 -c 'import json,sys; print(json.dumps([{"code": "Z%d" % i, "seating": json.loads(sys.argv[1])} for i in range(10)]))' "$rows")
    else
        zones=$(python3 -c 'import json; print(json.dumps([{"code": "Z%d" % i, "capacity": 20000} for i in range(10)]))')
    fi
    curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" -H 'Content-Type: application/json' \
        -d "{\"name\":\"seats benchmark\",\"zones\":$zones,\"per_user_limit\":100,\"hold_ttl_seconds\":3600,\"pass_ttl_seconds\":3600,\"release_rate\":100000,\"release_interval_ms\":100}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
run() { # name seated body [exact: 1, each hold two seats of its own]
    local sale
    sale=$(new_sale "$2")
    "$bin" prepare-buyers --sale "$sale" --count "$HOLDERS" --prefix "seats-$sale" --out "$work/holders" 2>/dev/null
    MODE=hold SALE=$sale BUYERS=$work/holders HOLD_BODY=$3 HOLD_SEATS=${4:-0} wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        -s load/wrk/hot.lua "http://$LISTEN_ADDR" > "$work/out"
    local line
    line=$(grep '^RESULT' "$work/out")
    echo "$1 ${line#RESULT hold }" | tee -a "$work/results" >&2
    if [[ $line =~ non2xx\ [1-9] || $line =~ errors\ [1-9] ]]; then
        echo "bench: $1 had refusals or errors: not the success path" >&2
        exit 1
    fi
}
for round in $(seq "$ROUNDS"); do
    echo "bench: round $round, wrk -t1 -c$CONNS -d${DURATION}s a run" >&2
    run ga 0 '{"zone":"Z%d","quantity":2}'
    run exact 1 '' 1
    run best 1 '{"zone":"Z%d","quantity":2}'
    run together 1 '{"zone":"Z%d","quantity":2,"together":true}'
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault(r[0], []).append(float(r[1]))
ga = runs["ga"]
print("holds a second over HTTP (median of %d rounds; ratio to GA of the same round):" % len(ga))
for name, v in runs.items():
    print("  %-9s %8.0f holds/s  seated/GA %.2f  (rounds: %s)" % (
        name, statistics.median(v), statistics.median(x / g for x, g in zip(v, ga)),
        " ".join("%.0f" % x for x in v)))
PY
echo "machine: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")" >&2
