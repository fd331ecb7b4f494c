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
#
# Next to each, in the same run: the same Lua script driven straight at Redis
# by redis-benchmark (EVALSHA, 64 connections, fresh buyers and reservation
# ids from __rand_int__), which is Redis's own ceiling for that request; and
# once, a bare axum server making one EVALSHA of `return 1` through fred
# (examples/bare_evalsha.rs), the ceiling of HTTP + fred on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
command -v redis-benchmark >/dev/null || { echo "bench: redis-benchmark is missing (apt-get install redis-tools)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "bench: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }

THREADS=${THREADS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-15}
PORT=${PORT:-18080}
JOINERS=${JOINERS:-300000}
# Each holder may hold 100 tickets (the sale's per-user limit), one a
# request: 30,000 holders last a 15 s run up to 200,000 holds a second.
HOLDERS=${HOLDERS:-30000}
bench_api_env "$PORT"

BARE_PORT=${BARE_PORT:-18090}
# Its own redis-server on a free port, stopped at the end: a hold run leaves
# about 650,000 reservations behind, and a Redis that keeps growing across
# runs makes each run slower than the last.
rdir=$(mktemp -d)
rhost=127.0.0.1
rport=$(free_port)
trap 'kill ${redis_pid:-} 2>/dev/null || true; rm -rf "$rdir"' EXIT
start_private_redis "$rport" "$rdir" --appendonly no
export REDIS_URL=redis://$rhost:$rport
cargo build --release --quiet -p flashsale --example bare_evalsha
bin=target/release/flashsale
"$bin" migrate >/dev/null
"$bin" serve & api=$!
target/release/examples/bare_evalsha "127.0.0.1:$BARE_PORT" 2>/dev/null & bare=$!
work=$(mktemp -d)
trap 'kill $api $bare $redis_pid 2>/dev/null || true; wait $api $bare $redis_pid 2>/dev/null || true; rm -rf "$work" "$rdir"' EXIT
for p in "$PORT" "$BARE_PORT"; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
rb() { # name "files" numkeys keys-and-args...: redis-benchmark EVALSHA of a script
    # "files": the script's files under lua/, its libraries first, as src/scripts.rs joins them
    local name=$1 sha files
    read -ra files <<<"$2"
    sha=$(redis-cli -h "$rhost" -p "$rport" script load "$(cd lua && cat "${files[@]}")")
    shift 2
    redis-benchmark -h "$rhost" -p "$rport" -c "$CONNS" -n "${RB_REQUESTS:-300000}" -r "${RB_RAND:-100000000}" --csv \
        evalsha "$sha" "$@" | tail -1 |
        awk -F'"' -v n="$name" '{printf "REDIS %s %.0f req/s p50 %.2f ms p99 %.2f ms\n", n, $4, $10, $14}' | tee -a "$work/results" >&2
}

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
    grep '^RESULT' "$work/$1.out" | tee -a "$work/results"
}

# Join and poll: a sale whose queue nobody is released from (no releaser runs).
queue_sale=$(new_sale '{"name":"queue benchmark","zones":[{"code":"A","capacity":1000}]}')
"$bin" token --sub "joiner-$queue_sale" --count "$JOINERS" > "$work/joiners"
run join "$queue_sale" "$work/joiners"
q="{sale:$queue_sale}"
rb join "lib/queue_place.lua join_queue.lua" 8 "$q:meta" "$q:waiting" "$q:arrivals" "$q:seen" "$q:joined" "$q:early" "$q:admitted" "$q:expired" \
    "rb-__rand_int__" 0.5
# Pollers: buyers known to be waiting (the join run may not have reached
# every line of the file).
head -n 50000 "$work/joiners" > "$work/pollers"
MODE=join SALE=$queue_sale BUYERS=$work/pollers wrk -t1 -c"$CONNS" -d5s -s load/wrk/hot.lua "http://$LISTEN_ADDR" >/dev/null
run poll "$queue_sale" "$work/pollers"
waiter=$(redis-cli -h "$rhost" -p "$rport" zrange "$q:waiting" 1000 1000)
rb poll "lib/queue_place.lua queue_status.lua" 5 "$q:meta" "$q:waiting" "$q:seen" "$q:admitted" "$q:expired" "$waiter" 5000

# Hold: admitted buyers with passes, stock and limits that never run out.
hold_sale=$(new_sale '{"name":"hold benchmark","zones":[{"code":"A","capacity":10000000}],"per_user_limit":100,"hold_ttl_seconds":3600,"pass_ttl_seconds":3600,"release_rate":100000,"release_interval_ms":100}')
"$bin" prepare-buyers --sale "$hold_sale" --count "$HOLDERS" --prefix "holder-$hold_sale" --out "$work/holders"
run hold "$hold_sale" "$work/holders"
# redis-benchmark's buyers: rb-000000000000 .. rb-000000099999 admitted by
# hand (its __rand_int__ is 12 digits, drawn afresh at each occurrence), each
# holding one ticket a call under a fresh reservation id.
h="{sale:$hold_sale}"
redis-cli -h "$rhost" -p "$rport" eval "local d = redis.call('TIME')[1] * 1000 + 3600000
for i = 0, 99999 do redis.call('ZADD', KEYS[1], d, string.format('rb-%012d', i)) end" 1 "$h:admitted" >/dev/null
RB_RAND=100000 rb hold "lib/seats.lua hold_tickets.lua" 9 "$h:meta" "$h:zones" "$h:res:rb-__rand_int__-__rand_int__" "$h:buyer:rb-__rand_int__" \
    "$h:deadlines" "$h:admitted" "$h:turns" "$h:seats" "$h:seatmap" "rb-__rand_int__" A 1 "rb-__rand_int__-__rand_int__" "" ""
echo "bench: bare axum + one EVALSHA (return 1) through fred, wrk -t$THREADS -c$CONNS -d${DURATION}s" >&2
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$BARE_PORT/" > "$work/bare.out"
awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "BARE axum+EVALSHA %.0f req/s p50 %s p99 %s\n", r, p50, p99}' "$work/bare.out" | tee -a "$work/results"

curl -sf "http://$LISTEN_ADDR/v1/sales/$hold_sale" | python3 -c '
import json, sys
z = json.load(sys.stdin)["zones"][0]
print("hold sale after: capacity %d, available %d, so %d tickets held" % (z["capacity"], z["available"], z["capacity"] - z["available"]))'
echo "summary:" >&2
cat "$work/results" >&2
echo "machine: $(nproc) cores, $(awk "/MemTotal/ {printf \"%.0f GiB\", \$2/1048576}" /proc/meminfo), $(lscpu | sed -n "s/^Model name: *//p")" >&2
# A run with refusals or errors measured something else than the endpoint's
# success path (say, holders who ran into their per-user limit): say so.
if grep -Eq '^RESULT .* (non2xx [1-9]|errors [1-9])' "$work/results"; then
    echo "bench: some requests were refused or failed (non2xx/errors above); these figures are not the endpoints' success path" >&2
    exit 1
fi
