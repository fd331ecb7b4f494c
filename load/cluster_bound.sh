#!/usr/bin/env bash
# The bound of one hot sale: holds a second with Redis's CPU at saturation,
# for one sale on one Redis, then for SALES sales spread over a local
# three-primary Redis Cluster, with Redis's own cost of a hold.
#
#   load/cluster_bound.sh                        # 15 s a run, 12 sales
#   DURATION=20 SALES=12 CONNS=64 load/cluster_bound.sh
#   HTTP=0 load/cluster_bound.sh                 # without the run over HTTP
#   CONNS=64 PIPELINE=8 load/cluster_bound.sh    # redis-benchmark -P 8: many
#                                                # holds a read, as the API's
#                                                # pipelined connection sends
#   CLUSTER=0 load/cluster_bound.sh              # one Redis only
#   CALLGRIND=0 load/cluster_bound.sh            # without Redis's instructions
#   BIN=path/to/flashsale load/cluster_bound.sh  # another build of the API
#   RENICE=0 load/cluster_bound.sh               # Redis and its clients at the
#                                                # usual priority (default -10)
#
# Every key of a sale carries the hash tag {sale:<id>}, so a sale lives on one
# Redis thread, whatever the number of shards. The runs:
#
# 1. one sale, one redis-server of its own: the hold script (EVALSHA of
#    lua/hold_tickets.lua) driven by redis-benchmark (CONNS connections,
#    PIPELINE calls in flight on each, default 1; a
#    fresh reservation id and one of 100,000 admitted buyers a call, per-user
#    limit 100, stock that never runs out), as bench_hot.sh drives it;
# 2. (HTTP=1) the same sale's holds through the API over HTTP: release build,
#    wrk with load/wrk/hot.lua, HOLDERS admitted buyers with passes made by
#    `flashsale prepare-buyers`, as bench_hot.sh's hold run;
# 3. (CALLGRIND=1) Redis's instructions a hold, counted by callgrind: a
#    redis-server under valgrind with the sale's settings and stock, and
#    CALLGRIND_HOLDS (20,000) holds of redis-benchmark, 8 connections; a
#    figure the other work on the machine does not move;
# 4. SALES sales over a local cluster of three primaries (SALES/3 on each
#    shard, each sale's script on its own shard): one redis-benchmark a sale,
#    CONNS/SALES*3 connections each, straight at the sale's shard.
#
# Each run warms up for WARMUP seconds, then measures DURATION seconds: holds
# a second from Redis's own count of EVALSHA calls (INFO commandstats); each
# Redis's CPU from /proc/<pid>/stat (user + system); the script's
# usec_per_call over the window (time measured around the call: on a busy
# machine it includes time Redis was off the CPU mid-call); and Redis's CPU a
# hold: all its CPU over the window, reading requests and writing replies
# included, divided by the holds. Every EVALSHA of a run must have held a
# ticket (the zones' held counters grew by the calls, counted before and
# after the run), or the script exits non-zero. At the end, a capacity table:
# 1 and 3 shards measured, and 1, 3 and 10 shards computed from the cluster
# run's CPU a hold (1e6 / CPU µs a hold, times the shards: a core a shard, no
# work across shards for a hold).
#
# Every process it starts (redis-servers, the API, redis-benchmark, wrk) runs
# on loopback ports of its own and is stopped at exit; the sales it makes are
# in the Postgres at DATABASE_URL, as bench_hot.sh's are.
set -euo pipefail
# The API is started with the development secrets of a run on this machine.
export FLASHSALE_ENV=development
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
# shellcheck source=scripts/toolchain.sh
source scripts/toolchain.sh
# shellcheck source=load/lib.sh
source load/lib.sh
ensure_services
ensure_rust
HTTP=${HTTP:-1}
CLUSTER=${CLUSTER:-1}
CALLGRIND=${CALLGRIND:-1}
CALLGRIND_HOLDS=${CALLGRIND_HOLDS:-20000}
for tool in redis-server redis-cli redis-benchmark python3 $([[ $CALLGRIND == 1 ]] && echo valgrind callgrind_control); do
    command -v "$tool" >/dev/null ||
        { echo "bound: $tool is missing (apt-get install redis-server redis-tools python3)" >&2; exit 1; }
done
if [[ $HTTP == 1 ]]; then
    command -v wrk >/dev/null || { echo "bound: wrk is missing (apt-get install wrk), or run with HTTP=0" >&2; exit 1; }
fi

DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
PIPELINE=${PIPELINE:-1}
SALES=${SALES:-12}
HOLDERS=${HOLDERS:-10000}
SHARDS=3
((SALES % SHARDS == 0)) || { echo "bound: SALES must be a multiple of $SHARDS" >&2; exit 2; }
export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
export RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-1}
HZ=$(getconf CLK_TCK)
# Other work on the machine would keep Redis off the CPU: what this script
# starts for a run runs at this niceness (when allowed), so Redis saturates.
RENICE=${RENICE:--10}
prio() { renice -n "$RENICE" -p "$@" >/dev/null 2>&1 || true; }

work=$(mktemp -d)
pids=()
cleanup() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | sed -n 's/^Model name: *//p'), Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${BIN:-} ]]; then
    bin=$BIN
elif [[ $HTTP == 1 ]]; then
    cargo build --release --quiet -p flashsale
    bin=target/release/flashsale
else
    cargo build --quiet -p flashsale
    bin=target/debug/flashsale
fi
"$bin" migrate >/dev/null

# A loopback port whose cluster bus port (+10000) is free too.
cluster_port() {
    python3 -c '
import random, socket
while True:
    p = random.randint(20000, 29999)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}

# start_api REDIS_URL: the API on a port of its own; sets api and api_addr.
start_api() {
    api_addr=127.0.0.1:$(free_port)
    REDIS_URL=$1 LISTEN_ADDR=$api_addr "$bin" serve &
    api=$!
    pids+=("$api")
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/${api_addr%:*}/${api_addr#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bound: the API did not start" >&2
    return 1
}
stop_api() { kill "$api" 2>/dev/null || true; wait "$api" 2>/dev/null || true; }

org=$("$bin" token --sub bound-organizer --role organizer)
hold_sale_body='{"name":"bound","zones":[{"code":"A","capacity":10000000}],"per_user_limit":100,"hold_ttl_seconds":3600,"pass_ttl_seconds":3600,"release_rate":100000,"release_interval_ms":100}'
new_sale() {
    curl -sf -X POST "http://$api_addr/v1/sales" -H "Authorization: Bearer $org" \
        -H 'Content-Type: application/json' -d "$hold_sale_body" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# admit_rb PORT SALE: redis-benchmark's buyers rb-000000000000 ..
# rb-000000099999 admitted by hand (as bench_hot.sh does).
admit_rb() {
    redis-cli -p "$1" eval "local d = redis.call('TIME')[1] * 1000 + 3600000
for i = 0, 99999 do redis.call('ZADD', KEYS[1], d, string.format('rb-%012d', i)) end" 1 "{sale:$2}:admitted" >/dev/null
}

# start_rb PORT SALE CONNS SHA: holds of one ticket each, a fresh reservation
# id and a buyer drawn from the 100,000 a call, until stopped.
start_rb() {
    local h="{sale:$2}"
    redis-benchmark -p "$1" -c "$3" -P "$PIPELINE" -n 2000000000 -r 100000 -q \
        evalsha "$4" 9 "$h:meta" "$h:zones" "$h:res:rb-__rand_int__-__rand_int__" "$h:buyer:rb-__rand_int__" \
        "$h:deadlines" "$h:admitted" "$h:turns" "$h:seats" "$h:seatmap" "rb-__rand_int__" A 1 "rb-__rand_int__-__rand_int__" "" "" \
        >/dev/null 2>&1 &
    rbs+=($!)
    pids+=($!)
    prio $!
}
stop_rbs() {
    for p in "${rbs[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${rbs[@]}"; do wait "$p" 2>/dev/null || true; done
    rbs=()
    sleep 0.5 # the last calls answered, nothing runs when the tally is taken
}

# snapshot PORT PID: "calls usec cpu_ticks" of one Redis: its EVALSHA calls
# and their µs (INFO commandstats), and its CPU ticks (user + system).
snapshot() {
    local stats
    stats=$(redis-cli -p "$1" info commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
    echo "${stats:-0 0} $(sed 's/.*) //' "/proc/$2/stat" | awk '{print $12 + $13}')"
}

# tally "PORT PID SALE..."...: EVALSHA calls and tickets held in those sales,
# over all the given Redis servers: "calls held". Taken while nothing runs,
# before and after a run: every EVALSHA of the run must have held a ticket.
tally() {
    local node port s v calls=0 held=0
    for node in "$@"; do
        # shellcheck disable=SC2086 # PORT PID SALE... split on purpose
        set -- $node
        port=$1
        v=$(snapshot "$port" "$2")
        calls=$((calls + ${v%% *}))
        shift 2
        for s in "$@"; do
            v=$(redis-cli -p "$port" hget "{sale:$s}:zones" A:held)
            held=$((held + ${v:-0}))
        done
    done
    echo "$calls $held"
}

# check LABEL BEFORE AFTER: the tallies before and after a run agree.
check() {
    local -a b a
    read -ra b <<<"$2"
    read -ra a <<<"$3"
    local calls=$((a[0] - b[0])) held=$((a[1] - b[1]))
    if ((calls <= 0 || calls != held)); then
        echo "bound: $1: $calls EVALSHA calls but $held tickets held: not every call was a hold" >&2
        exit 1
    fi
    echo "CHECK $1 $calls EVALSHA calls, $held tickets held" | tee -a "$work/results"
}

# client_ticks: CPU ticks so far of the load's clients: the redis-benchmarks
# running, or the processes named in $clients (the API over HTTP).
client_ticks() {
    local p t=0
    for p in "${rbs[@]}" ${clients:-}; do
        [[ -r /proc/$p/stat ]] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$t"
}

# measure LABEL then, per Redis, "PORT PID" (one argument each): warms up,
# then measures DURATION seconds; prints one BOUND line a Redis and one TOTAL
# line, appended to $work/results.
measure() {
    local label=$1 i n t0 t1
    shift
    n=$#
    local -a nodes=("$@") before after
    sleep "$WARMUP"
    local c0 c1
    c0=$(client_ticks)
    t0=$(date +%s.%N)
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086 # PORT PID split on purpose
        before[i]=$(snapshot ${nodes[i]})
    done
    sleep "$DURATION"
    t1=$(date +%s.%N)
    c1=$(client_ticks)
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        after[i]=$(snapshot ${nodes[i]})
    done
    for ((i = 0; i < n; i++)); do
        echo "${nodes[i]%% *} ${before[i]} ${after[i]}"
    done | awk -v label="$label" -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v client="$((c1 - c0))" '
        {
            dt = t1 - t0
            calls = $5 - $2; usec = $6 - $3; cpu = ($7 - $4) / hz
            if (calls <= 0) { printf "BAD %s redis :%s made no EVALSHA calls\n", label, $1; bad = 1; next }
            printf "BOUND %s redis :%s holds/s %.0f cpu %.0f%% usec_per_call %.2f cpu_us_per_hold %.2f\n",
                label, $1, calls / dt, 100 * cpu / dt, usec / calls, 1e6 * cpu / calls
            tc += calls; tu += usec; tcpu += cpu
        }
        END {
            if (tc > 0)
                printf "TOTAL %s holds/s %.0f redis_cpu %.0f%% usec_per_call %.2f cpu_us_per_hold %.2f client_cpu %.0f%%\n",
                    label, tc / dt, 100 * tcpu / dt, tu / tc, 1e6 * tcpu / tc, 100 * client / hz / dt
            exit bad
        }' | tee -a "$work/results"
}

rbs=()

# 1. One sale, one Redis.
one=$work/one
mkdir -p "$one"
oport=$(free_port)
start_private_redis "$oport" "$one" --appendonly no
opid=$redis_pid
prio "$opid"
pids+=("$opid")
start_api "redis://127.0.0.1:$oport"
sale=$(new_sale)
stop_api
admit_rb "$oport" "$sale"
sha=$(redis-cli -p "$oport" script load "$(cat lua/lib/seats.lua lua/hold_tickets.lua)")
echo "bound: one sale on one Redis, redis-benchmark -c $CONNS, ${DURATION}s" >&2
tally0=$(tally "$oport $opid $sale")
start_rb "$oport" "$sale" "$CONNS" "$sha"
measure one-redis "$oport $opid"
stop_rbs
check one-redis "$tally0" "$(tally "$oport $opid $sale")"

# 2. The same sale over HTTP.
if [[ $HTTP == 1 ]]; then
    start_api "redis://127.0.0.1:$oport"
    REDIS_URL=redis://127.0.0.1:$oport "$bin" prepare-buyers --sale "$sale" --count "$HOLDERS" \
        --prefix "bound-$sale" --out "$work/holders" 2>/dev/null
    tally0=$(tally "$oport $opid $sale")
    echo "bound: one sale over HTTP, wrk -t1 -c$CONNS, ${DURATION}s" >&2
    MODE=hold SALE=$sale BUYERS=$work/holders wrk -t1 -c"$CONNS" -d"$((WARMUP + DURATION + 2))s" \
        -s load/wrk/hot.lua "http://$api_addr" >"$work/wrk.out" &
    wrk_pid=$!
    pids+=("$wrk_pid")
    prio "$api" "$wrk_pid"
    clients=$api
    measure http-api "$oport $opid"
    clients=
    wait "$wrk_pid"
    sleep 0.5
    check http-api "$tally0" "$(tally "$oport $opid $sale")"
    sed -n 's/^RESULT/HTTP wrk/p' "$work/wrk.out" | tee -a "$work/results"
    if grep -Eq '^RESULT .* (non2xx [1-9]|errors [1-9])' "$work/wrk.out"; then
        echo "bound: some holds over HTTP were refused or failed" >&2
        exit 1
    fi
    stop_api
fi

# 3. Redis's instructions a hold: a redis-server under callgrind, the sale's
# settings and stock copied into it, CALLGRIND_HOLDS holds of redis-benchmark
# counted (user space: Redis reading, running and answering; not the kernel).
if [[ $CALLGRIND == 1 ]]; then
    cg=$work/callgrind
    mkdir -p "$cg"
    cport=$(free_port)
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$cg/callgrind.out" \
        redis-server --bind 127.0.0.1 --port "$cport" --dir "$cg" --save '' --appendonly no \
        --logfile "$cg/redis.log" 2>"$cg/valgrind.log" &
    cgpid=$!
    pids+=("$cgpid")
    for _ in $(seq 1 300); do redis-cli -p "$cport" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    redis-cli -p "$oport" migrate 127.0.0.1 "$cport" "" 0 5000 COPY KEYS "{sale:$sale}:meta" "{sale:$sale}:zones" >/dev/null
    admit_rb "$cport" "$sale"
    sha=$(redis-cli -p "$cport" script load "$(cat lua/lib/seats.lua lua/hold_tickets.lua)")
    tally0=$(tally "$cport $cgpid $sale")
    callgrind_control -z "$cgpid" >/dev/null 2>&1
    callgrind_control -i on "$cgpid" >/dev/null 2>&1
    echo "bound: Redis's instructions a hold, callgrind, $CALLGRIND_HOLDS holds" >&2
    h="{sale:$sale}"
    redis-benchmark -p "$cport" -c 8 -n "$CALLGRIND_HOLDS" -r 100000 -q \
        evalsha "$sha" 9 "$h:meta" "$h:zones" "$h:res:rb-__rand_int__-__rand_int__" "$h:buyer:rb-__rand_int__" \
        "$h:deadlines" "$h:admitted" "$h:turns" "$h:seats" "$h:seatmap" "rb-__rand_int__" A 1 "rb-__rand_int__-__rand_int__" "" "" >/dev/null
    callgrind_control -i off "$cgpid" >/dev/null 2>&1
    check callgrind "$tally0" "$(tally "$cport $cgpid $sale")"
    callgrind_control -d "$cgpid" >/dev/null 2>&1
    for _ in $(seq 1 100); do grep -qs '^totals:' "$cg"/callgrind.out* && break; sleep 0.2; done
    total=$(awk '/^totals:/ {s += $2} END {print s + 0}' "$cg"/callgrind.out*)
    ((total > 0)) || { echo "bound: callgrind counted nothing (see $cg/valgrind.log)" >&2; exit 1; }
    echo "INSTRUCTIONS redis $((total / CALLGRIND_HOLDS)) a hold ($CALLGRIND_HOLDS holds, $total instructions)" |
        tee -a "$work/results"
    kill "$cgpid" 2>/dev/null || true
    wait "$cgpid" 2>/dev/null || true
fi
kill "$opid" 2>/dev/null || true
wait "$opid" 2>/dev/null || true

[[ $CLUSTER == 1 ]] || exit 0

# 4. SALES sales over a cluster of three primaries.
ports=() cpids=()
for ((i = 0; i < SHARDS; i++)); do
    p=$(cluster_port)
    mkdir -p "$work/node$i"
    start_private_redis "$p" "$work/node$i" --appendonly no --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 5000
    ports+=("$p")
    cpids+=("$redis_pid")
    prio "$redis_pid"
    pids+=("$redis_pid")
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 300); do
    ok=0
    for p in "${ports[@]}"; do
        redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    ((ok == SHARDS)) && break
    sleep 0.1
done
((ok == SHARDS)) || { echo "bound: the cluster did not come up" >&2; exit 1; }
# Sales until each shard has SALES/SHARDS of them (the shard is the one whose
# slot holds the sale's keys).
start_api "redis-cluster://$(IFS=,; echo "${ports[*]/#/127.0.0.1:}")"
declare -A on_shard
for ((i = 0; i < SHARDS; i++)); do on_shard[$i]=""; done
made=0
for _ in $(seq 1 $((SALES * 6))); do
    ((made == SALES)) && break
    s=$(new_sale)
    slot=$(redis-cli -p "${ports[0]}" cluster keyslot "{sale:$s}")
    for ((i = 0; i < SHARDS; i++)); do
        if [[ $(redis-cli -p "${ports[i]}" cluster countkeysinslot "$slot") -gt 0 ]]; then
            # shellcheck disable=SC2206
            have=(${on_shard[$i]})
            if ((${#have[@]} < SALES / SHARDS)); then
                on_shard[$i]="${on_shard[$i]} $s"
                made=$((made + 1))
            fi
        fi
    done
done
stop_api
((made == SALES)) || { echo "bound: could not spread $SALES sales over $SHARDS shards" >&2; exit 1; }
per_sale=$((CONNS * SHARDS / SALES))
((per_sale >= 1)) || per_sale=1
nodes=() sales_at=()
for ((i = 0; i < SHARDS; i++)); do
    sales_at+=("${ports[i]} ${cpids[i]}${on_shard[$i]}")
done
tally0=$(tally "${sales_at[@]}")
for ((i = 0; i < SHARDS; i++)); do
    p=${ports[i]}
    sha=$(redis-cli -p "$p" script load "$(cat lua/lib/seats.lua lua/hold_tickets.lua)")
    for s in ${on_shard[$i]}; do
        admit_rb "$p" "$s"
        start_rb "$p" "$s" "$per_sale" "$sha"
    done
    nodes+=("$p ${cpids[i]}")
done
echo "bound: $SALES sales over $SHARDS shards, one redis-benchmark -c $per_sale a sale, ${DURATION}s" >&2
measure "cluster-$SALES-sales" "${nodes[@]}"
stop_rbs
check "cluster-$SALES-sales" "$tally0" "$(tally "${sales_at[@]}")"

# The capacity table, from the runs above.
awk -v cores="$(nproc)" '
    $1 == "TOTAL" && $2 == "one-redis" { one = $4; one_cost = $10 }
    $1 == "TOTAL" && $2 ~ /^cluster-/ { three = $4; three_cost = $10; three_cpu = $6 }
    END {
        print "capacity: holds a second of the hold script, by shards"
        printf "| shards | holds/s | how |\n| --- | --- | --- |\n"
        printf "| 1 | %d | measured: one sale, one Redis |\n", one
        printf "| 3 | %d | measured: %s Redis CPU over 3 shards on %d cores |\n", three, three_cpu, cores
        for (n = 1; n <= 10; n += (n == 1 ? 2 : 7))
            printf "| %d | %.0f | computed: %d x 1e6 / %.2f µs of Redis CPU a hold, a core a shard |\n",
                n, n * 1e6 / three_cost, n, three_cost
        printf "one sale: at most %.0f holds/s (1e6 / %.2f µs), whatever the shards\n", 1e6 / one_cost, one_cost
    }' "$work/results" | tee -a "$work/results"
