#!/usr/bin/env bash
# Redis's time per hold in a seated zone of 20,000 seats (100 rows of 200),
# against a general-admission zone, and per read of its seat map: a private
# Redis on PORT (default 26417, stopped at the end), the scripts as the
# service sends them (lib/seats prepended), each run filling 90% of a fresh
# zone. Best-available and general-admission holds go through
# redis-benchmark (8 connections, a fresh buyer and reservation id a call);
# exact seats through redis-cli --pipe, a pair of neighbours a call, the
# pairs in random order. Figures: Redis's usec_per_call (INFO commandstats).
# Then load/seats_ab.py times the two kinds in turn: inside one EVAL, as
# EVALSHA calls (slow log), and as holds a second one Redis serves.
# Run from the repository's root: ROUNDS=5 AB_ROUNDS=5 load/bench_seats.sh
set -euo pipefail
port=${PORT:-26417}
work=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
redis-server --port $port --save '' --appendonly no --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
sleep 0.5
r() { redis-cli -p $port "$@"; }
hold_sha=$(r script load "$(cat lua/lib/seats.lua lua/hold_tickets.lua)")
load_sha=$(r script load "$(cat lua/load_sale.lua)")
# The zone's segment of the seat map, every seat free (src/seatmap.rs).
segment=$(python3 -c 'print("".join("|R%d:%s" % (i, "." * 200) for i in range(100)) + "|")')
setup() { # sale
  local h="{sale:$1}"
  r evalsha $load_sha 4 "$h:meta" "$h:zones" "$h:seats" "$h:seatmap" 4 opens_at_ms 0 closes_at_ms 0 per_user_limit 100 hold_ttl_ms 3600000 \
    ST 20000 "$segment" GA 20000 "" >/dev/null
  r eval "local d = redis.call('TIME')[1] * 1000 + 3600000
for i = 0, 99999 do redis.call('ZADD', KEYS[1], d, string.format('rb-%012d', i)) end" 1 "$h:admitted" >/dev/null
}
stat() { # name command: prints the figures, keeps usec_per_call for the medians
  local line
  line=$(r info commandstats | grep "^cmdstat_$2:" | tr -d '\r')
  echo "$1: $line"
  printf '%s\t%s\n' "$1" "$(echo "$line" | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')" >>"$work/figures"
}
bench() { # name sale n zone quantity pick ("" any, "t" together)
  local name=$1 h="{sale:$2}" n=$3 zone=$4 qty=$5 pick=$6
  r config resetstat >/dev/null
  # ARGV: user, zone, quantity, reservation id, fingerprint, pick.
  redis-benchmark -p $port -c 8 -n "$n" -r 100000 -q evalsha $hold_sha 9 "$h:meta" "$h:zones" "$h:res:rb-__rand_int__-__rand_int__" "$h:buyer:rb-__rand_int__" \
    "$h:deadlines" "$h:admitted" "$h:turns" "$h:seats" "$h:seatmap" "rb-__rand_int__" "$zone" "$qty" "rb-__rand_int__-__rand_int__" "" "$pick" >/dev/null
  stat "$name" evalsha
}
exact() { # name sale: 9,000 holds of two neighbours, in random order
  local h="{sale:$2}"
  python3 - "$hold_sha" "$h" >"$work/exact.resp" <<'PY'
import random, sys
sha, h = sys.argv[1], sys.argv[2]
pairs = [(row, n) for row in range(100) for n in range(1, 200, 2)]
random.shuffle(pairs)
out = []
for i, (row, n) in enumerate(pairs[:9000]):
    user = "rb-%012d" % i
    args = ["EVALSHA", sha, "9", h + ":meta", h + ":zones", h + ":res:" + user, h + ":buyer:" + user,
            h + ":deadlines", h + ":admitted", h + ":turns", h + ":seats", h + ":seatmap",
            user, "ST", "2", user, "", "x:R%d-%d,R%d-%d" % (row, n, row, n + 1),
            "R%d" % row, str(n), "R%d" % row, str(n + 1)]
    out.append("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args))
sys.stdout.write("".join(out))
PY
  r config resetstat >/dev/null
  r --pipe <"$work/exact.resp" >/dev/null
  stat "$1" evalsha
  echo "  $(r hget "$h:zones" ST:held) seats held"
}
# Rounds, each run once per round on a fresh sale, in turn: the machine's
# speed drifts, so each seated figure is also given as its ratio to the
# general-admission run of the same round, and the medians are quoted.
rounds=${ROUNDS:-5}
: >"$work/figures"
for round in $(seq "$rounds"); do
  setup "ga$round"; bench "GA quantity 2" "ga$round" 9000 GA 2 ""
  setup "ex$round"; exact "seated, exact 2 (neighbours)" "ex$round"
  setup "b2$round"; bench "seated, best 2 (not together)" "b2$round" 9000 ST 2 ""
  setup "t2$round"; bench "seated, together 2" "t2$round" 9000 ST 2 t
  setup "t4$round"; bench "seated, together 4" "t4$round" 4500 ST 4 t
done
# The seat map of a 20,000-seat zone, 90% held, as the API reads it: where
# the zone lies (the meta's `seated`, ",ST=first:last,"), then its segment.
span=$(r hget "{sale:t21}:meta" seated | sed 's/.*,ST=\([0-9]*\):\([0-9]*\),.*/\1 \2/')
r config resetstat >/dev/null
redis-benchmark -p $port -c 8 -n 100000 -q hget "{sale:t21}:meta" seated >/dev/null
redis-benchmark -p $port -c 8 -n 100000 -q getrange "{sale:t21}:seatmap" $((${span% *} - 1)) $((${span#* } - 1)) >/dev/null
echo "seat map read: $(r info commandstats | grep -E '^cmdstat_(hget|getrange):' | tr -d '\r' | sed 's/,rejected.*//' | tr '\n' ' ')"
python3 - "$work/figures" "$rounds" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
names = list(dict.fromkeys(name for name, _ in rows))
per = {name: [float(v) for n, v in rows if n == name] for name in names}
ga = per[names[0]]
print("\nmedians over %d rounds (Redis time a call; ratio to GA of the same round):" % rounds)
for name in names:
    v = per[name]
    ratio = statistics.median(x / g for x, g in zip(v, ga))
    print("  %-32s %7.2f us  (%.2f to %.2f)  x%.2f  ~%d holds/s" % (
        name, statistics.median(v), min(v), max(v), ratio, 1e6 / statistics.median(v)))
PY
# The same holds in interleaved pairs inside Redis (load/seats_ab.py).
python3 load/seats_ab.py "$port" "${AB_ROUNDS:-3}"
