# shellcheck shell=bash
# What the load scripts share (run.sh, bench_hot.sh, bench_seats_http.sh,
# instructions.sh...): a free loopback port, a private redis-server of
# their own, and the API's settings for a benchmark.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_private_redis PORT DIR [redis-server options ...]
# Starts redis-server on 127.0.0.1:PORT in the background, its files and log
# in DIR, no RDB snapshots; sets redis_pid and returns once it answers PING
# (non-zero, with a message, and stopped, if it never does).
start_private_redis() {
    local port=$1 dir=$2
    shift 2
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
        --logfile "$dir/redis.log" "$@" &
    redis_pid=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "load: the private redis-server did not start; see $dir/redis.log" >&2
    kill "$redis_pid" 2>/dev/null || true
    return 1
}

# bench_api_env PORT
# The API's settings for a benchmark over HTTP on this machine, exported.
bench_api_env() {
    export JWT_SECRET=${JWT_SECRET:-bench-secret-bench-secret-bench-secret-0123}
    # A published secret and a pass key shared through Redis: development only.
    export FLASHSALE_ENV=development
    export LISTEN_ADDR=127.0.0.1:$1 RUST_LOG=${RUST_LOG:-warn}
    # One address (wrk) at tens of thousands of requests a second: limits off.
    export RATE_LIMITS=off
    # wrk, Redis and the API share two cores: one runtime worker and one
    # pipelined Redis connection, for the service and the bare server alike.
    export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-1}
}
