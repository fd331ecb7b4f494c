#!/usr/bin/env bash
# The reconciler and the sink over a large backlog: ENTRIES real
# confirmations (default 200,000) waiting in one sale's stream, none yet in
# Postgres. With every Redis command logged (SLOWLOG, slower-than 0, reset
# first), one reconciler pass over the sale is timed and the longest command
# it sent reported: the pass must never hold Redis for long, however long the
# backlog. Then a sink drains the backlog, timed (rows per second), with the
# longest command of the drain.
#
#   load/backlog.sh                 # 200,000 entries, sink batch 500
#   load/backlog.sh 200000 2000
#   PG_SOCKET=/var/run/postgresql load/backlog.sh
#
# PG_SOCKET: the sink and the reconciler reach Postgres through its Unix
# socket instead of loopback TCP. sqlx 0.9.0 leaves Nagle's algorithm on for
# TCP, and a statement with large parameters (a batch, a page of ids) then
# waits about 40 ms for the server's delayed ACK; over the socket it does
# not, which shows what that wait costs.
#
# Its own redis-server on a free port (SLOWLOG settings are the server's),
# and its own database in the local Postgres, both removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust

ENTRIES=${1:-200000}
BATCH=${2:-500}
base=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flashsale}
db=fs_backlog_$$
rdir=$(mktemp -d)
rport=$(free_port)
cleanup() {
    # Wait for the server to go: it writes its log as it exits.
    { kill "${redis_pid:-}" && wait "${redis_pid:-}"; } 2>/dev/null || true
    rm -rf "$rdir"
    psql -q "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cargo build --release --quiet -p flashsale-workers --example sink_throughput
start_private_redis "$rport" "$rdir" --appendonly no
psql -q "$base" -c "CREATE DATABASE $db" >/dev/null
url=${base%/*}/$db
if [[ -n ${PG_SOCKET:-} ]]; then
    url=postgres://postgres@${PG_SOCKET//\//%2F}/$db
fi
export REDIS_URL=redis://127.0.0.1:$rport DATABASE_URL=$url RUST_LOG=${RUST_LOG:-warn}
echo "backlog: Postgres at ${PG_SOCKET:-${base%/*}}; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
target/release/examples/sink_throughput "$ENTRIES" "$BATCH" --slowlog
