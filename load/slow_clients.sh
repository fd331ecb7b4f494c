#!/usr/bin/env bash
# Slow clients: 3,000 connections trickle a header byte every 5 s and never
# finish their request head, while 200 ordinary requests are timed; the
# ordinary ones must keep a p99 under 200 ms, and the server must close
# every slow connection within its header-read timeout
# (load/slow_clients.py; exits non-zero otherwise).
#
#   load/slow_clients.sh
#   TRICKLERS=5000 HEADER_READ_TIMEOUT_SECONDS=5 load/slow_clients.sh
#
# The release API on a free port, with its own redis-server; Postgres is
# the machine's. `ulimit -n` must allow TRICKLERS + NORMAL connections on
# each side (client and server).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh
source scripts/toolchain.sh
source load/lib.sh
ensure_services
ensure_rust

export HEADER_READ_TIMEOUT_SECONDS=${HEADER_READ_TIMEOUT_SECONDS:-10}
export TRICKLERS=${TRICKLERS:-3000}
need=$(( TRICKLERS + 1000 ))
if (( $(ulimit -n) < need )); then
    ulimit -n "$need" 2>/dev/null || { echo "slow_clients: ulimit -n is $(ulimit -n); $need needed" >&2; exit 1; }
fi
port=$(free_port)
export LISTEN_ADDR=127.0.0.1:$port RUST_LOG=${RUST_LOG:-warn} RATE_LIMITS=off
# A published secret and a pass key shared through Redis: development only.
export FLASHSALE_ENV=development
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-1}

cargo build --release --quiet --workspace
bin=target/release/flashsale
work=$(mktemp -d)
rport=$(free_port)
start_private_redis "$rport" "$work" --appendonly no || exit 1
export REDIS_URL=redis://127.0.0.1:$rport
"$bin" serve >"$work/api.log" 2>&1 & api=$!
trap 'kill $api ${redis_pid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
python3 load/slow_clients.py 127.0.0.1 "$port" "$HEADER_READ_TIMEOUT_SECONDS"
echo "slow_clients: the API's metrics: $(curl -s "http://$LISTEN_ADDR/metrics" | grep -E '^flashsale_connections_(timed_out_total|refused_total|open)' | tr '\n' ' ')"
echo "slow_clients: API peak resident memory $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$api/status")"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | sed -n 's/^Model name: *//p')"
