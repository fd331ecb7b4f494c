#!/usr/bin/env bash
# What waiting for a replica costs a confirmation: hold + confirm over HTTP
# against a release build of the API, with CONFIRM_WAIT_REPLICAS=0 and then
# =1, on a private Redis primary with one replica (both with AOF, everysec,
# as production runs them) and the machine's Postgres. Prints the
# confirmations' (and the holds') p50/p99 for each setting and concurrency.
#
#   load/confirm_wait.sh
#   CONCURRENCY="1 16 64" BUYERS=20000 load/confirm_wait.sh
#
# Each run gets a fresh sale and fresh buyers (`flashsale prepare-buyers`),
# each of whom holds one ticket and confirms it (examples/confirm_latency.rs).
# Concurrency 1 shows the wait itself; higher ones show it under load.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust

CONCURRENCY=${CONCURRENCY:-"1 32"}
# Buyers a run: SERIAL_BUYERS at concurrency 1, BUYERS above.
BUYERS=${BUYERS:-20000}
SERIAL_BUYERS=${SERIAL_BUYERS:-2000}
PORT=${PORT:-18081}
export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
# A published secret and a pass key shared through Redis: development only.
export FLASHSALE_ENV=development
export LISTEN_ADDR=127.0.0.1:$PORT RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off

work=$(mktemp -d)
mkdir -p "$work/primary" "$work/replica"
cleanup() {
    kill ${api:-} ${primary_pid:-} ${replica_pid:-} 2>/dev/null || true
    wait ${api:-} ${primary_pid:-} ${replica_pid:-} 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
pport=$(free_port)
start_private_redis "$pport" "$work/primary" --appendonly yes --appendfsync everysec \
    --repl-diskless-sync-delay 0
primary_pid=$redis_pid
rport=$(free_port)
start_private_redis "$rport" "$work/replica" --appendonly yes --appendfsync everysec \
    --replicaof 127.0.0.1 "$pport"
replica_pid=$redis_pid
for _ in $(seq 1 100); do
    redis-cli -p "$pport" info replication | grep -q 'state=online' && break
    sleep 0.1
done
redis-cli -p "$pport" info replication | grep -q 'state=online' ||
    { echo "confirm_wait: the replica did not come online" >&2; exit 1; }
export REDIS_URL=redis://127.0.0.1:$pport

cargo build --release --quiet -p flashsale --bin flashsale --example confirm_latency
bin=target/release/flashsale
"$bin" migrate >/dev/null
org=$("$bin" token --sub bench-organizer --role organizer)

for replicas in 0 1; do
    CONFIRM_WAIT_REPLICAS=$replicas "$bin" serve > "$work/api-$replicas.log" 2>&1 & api=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    for c in $CONCURRENCY; do
        n=$BUYERS
        [ "$c" = 1 ] && n=$SERIAL_BUYERS
        sale=$(curl -sf -X POST "http://$LISTEN_ADDR/v1/sales" -H "Authorization: Bearer $org" \
            -H 'Content-Type: application/json' \
            -d '{"name":"confirm wait","zones":[{"code":"A","capacity":10000000}],"per_user_limit":1,"hold_ttl_seconds":3600,"pass_ttl_seconds":3600,"release_rate":100000,"release_interval_ms":100}' |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
        "$bin" prepare-buyers --sale "$sale" --count "$n" --prefix "cw-$sale" --out "$work/buyers" \
            > "$work/prepare.log" 2>&1 || { cat "$work/prepare.log" >&2; exit 1; }
        echo "confirm_wait: CONFIRM_WAIT_REPLICAS=$replicas, concurrency $c, $n buyers" >&2
        target/release/examples/confirm_latency "http://$LISTEN_ADDR" "$sale" "$work/buyers" "$c" |
            sed "s/^RESULT /RESULT CONFIRM_WAIT_REPLICAS=$replicas /" | tee -a "$work/results"
    done
    kill "$api"
    wait "$api" 2>/dev/null || true
    api=
done

echo "summary:" >&2
cat "$work/results" >&2
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" >&2
if grep -Eq 'failed [1-9]' "$work/results"; then
    echo "confirm_wait: some holds or confirmations failed; these figures are not the success path" >&2
    tail -n 20 "$work"/api-*.log >&2
    exit 1
fi
