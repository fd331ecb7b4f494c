# shellcheck shell=bash
# What the load scripts share (run.sh, bench_hot.sh, instructions.sh):
# a free loopback port, and a private redis-server of their own.

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
