#!/usr/bin/env bash
# Redis's time per hold in a seated zone of 20,000 seats (100 rows of 200),
# against a general-admission zone, and per read of its seat map: a private
# Redis on PORT (default 26417, stopped at the end), the scripts as the
# service sends them (lib/seats prepended), 8 connections, each run filling
# 90% of a fresh zone. Figures: Redis's usec_per_call (INFO commandstats).
# Run from the repository's root: load/bench_seats.sh
set -euo pipefail
port=${PORT:-26417}
work=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
redis-server --port $port --save '' --appendonly no --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
sleep 0.5
r() { redis-cli -p $port "$@"; }
hold_sha=$(r script load "$(cat lua/lib/seats.lua lua/hold_tickets.lua)")
load_sha=$(r script load "$(cat lua/load_sale.lua)")
layout=$(python3 -c 'print(",".join("R%d:200" % i for i in range(100)))')
setup() { # sale
  local h="{sale:$1}"
  r evalsha $load_sha 3 "$h:meta" "$h:zones" "$h:seats" 4 opens_at_ms 0 closes_at_ms 0 per_user_limit 100 hold_ttl_ms 3600000 \
    ST 20000 "$layout" GA 20000 "" >/dev/null
  r eval "local d = redis.call('TIME')[1] * 1000 + 3600000
for i = 0, 99999 do redis.call('ZADD', KEYS[1], d, string.format('rb-%012d', i)) end" 1 "$h:admitted" >/dev/null
}
bench() { # name sale n zone quantity pick ("" any, "t" together)
  local name=$1 h="{sale:$2}" n=$3 zone=$4 qty=$5 pick=$6
  r config resetstat >/dev/null
  # ARGV: user, zone, quantity, reservation id, fingerprint, pick.
  redis-benchmark -p $port -c 8 -n "$n" -r 100000 -q evalsha $hold_sha 8 "$h:meta" "$h:zones" "$h:res:rb-__rand_int__-__rand_int__" "$h:buyer:rb-__rand_int__" \
    "$h:deadlines" "$h:admitted" "$h:turns" "$h:seats" "rb-__rand_int__" "$zone" "$qty" "rb-__rand_int__-__rand_int__" "" "$pick" >/dev/null
  echo "$name: $(r info commandstats | grep '^cmdstat_evalsha:' | tr -d '\r')"
}
setup s1; bench "GA quantity 2" s1 9000 GA 2 ""
setup s2; bench "seated, best 2 (not together)" s2 9000 ST 2 ""
setup s3; bench "seated, together 2" s3 9000 ST 2 t
setup s4; bench "seated, together 4" s4 4500 ST 4 t
# The seat map of the 20,000-seat zone as the API reads it.
r config resetstat >/dev/null
redis-benchmark -p $port -c 8 -n 100000 -q hmget "{sale:s3}:seats" ST:rows ST:map >/dev/null
echo "seat map (HMGET, 20 KB): $(r info commandstats | grep '^cmdstat_hmget:' | tr -d '\r')"
