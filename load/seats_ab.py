"""Seated holds against general-admission ones, in interleaved pairs.

The hold script (lua/lib/seats.lua + lua/hold_tickets.lua, as the service
loads it) is wrapped as a Lua function and called inside one EVAL, a
general-admission hold and a seated hold in turn, each timed with Redis's
TIME. Both kinds meet the same machine at the same moment, so their ratio
holds when the machine's speed drifts, which redis-benchmark runs taken one
after the other cannot promise. Each round uses two fresh sales (a zone of
20,000 seats, 100 rows of 200, and a general-admission zone) and fills 90%
of the seated zone; the medians of the rounds are printed.

Then the same pairs as real EVALSHA calls, a general-admission hold and a
seated one in turn on one pipelined connection, each call's time read back
from Redis's slow log (threshold 0): what a call costs the service,
including what every EVALSHA costs Redis around the script.

Last, holds a second one Redis serves: the same calls pipelined in batches
of 500, a general-admission batch and a seated batch in turn, each timed
from its first byte sent to its last reply.

Besides a zone of free seats, one where every other seat is sold: no two
free seats side by side, so the best seats are found one by one.

Usage (load/bench_seats.sh runs it): python3 load/seats_ab.py PORT [ROUNDS]
The Redis on PORT is flushed between rounds: use a private one.
"""
import socket
import statistics
import subprocess
import sys
import time

port = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
source = open("lua/lib/seats.lua").read() + "\n" + open("lua/hold_tickets.lua").read()
# KEYS and ARGV become the wrapper's parameters.
body = source.replace("KEYS[", "K[").replace("ARGV[", "A[").replace("ARGV", "A")
load = open("lua/load_sale.lua").read()
# The seated zone: 100 rows of 200 seats, all free; or every other seat
# sold, so that no two free seats are side by side (10,000 free).
SEGMENTS = {"free": "".join("|R%d:%s" % (i, "." * 200) for i in range(100)) + "|",
            "apart": "".join("|R%d:%s" % (i, ".#" * 100) for i in range(100)) + "|"}


def r(*args):
    return subprocess.run(["redis-cli", "-p", port, *args], capture_output=True, text=True,
                          check=True).stdout.strip()


# The seated holds measured: name, quantity, pick ("x" two neighbours, ""
# the best, "t" together), holds a round, the zone's seats. The best 2 not
# together are side by side while a row has two free ones: in a zone whose
# free seats are all apart, they are found one by one.
KINDS = [("exact 2 (neighbours)", "2", "x", 9000, "free"),
         ("best 2 (not together)", "2", "", 9000, "free"),
         ("best 2, no 2 free together", "2", "", 4500, "apart"),
         ("2 together", "2", "t", 9000, "free"),
         ("4 together", "4", "t", 4500, "free")]


def pick_args(mode, i):
    """The hold's ARGV[6] on: exact seats are two neighbours, each row in turn."""
    if mode != "x":
        return [mode]
    row, s = "R%d" % (i % 100), 2 * (i // 100) + 1
    return ["x:%s-%d,%s-%d" % (row, s, row, s + 1), row, str(s), row, str(s + 1)]


def report(name, gas, seats, ratios, figure, ratio):
    """One kind's line: the medians of its rounds, and each round's ratio."""
    print(("  %-22s GA " + figure + "  seated " + figure + "  %s median %.2f (rounds: %s)") % (
        name, statistics.median(gas), statistics.median(seats), ratio, statistics.median(ratios),
        " ".join("%.2f" % x for x in ratios)))


def fresh_sales(layout):
    """A flushed Redis with a general-admission sale and a seated one."""
    r("flushall")
    setup("{ga}")
    setup("{seated}", layout)


def setup(h, seats="free"):
    # A zone's capacity counts its sold seats too (as a restore loads it).
    capacity = str(20000)
    r("eval", load, "4", h + ":meta", h + ":zones", h + ":seats", h + ":seatmap", "4",
      "opens_at_ms", "0", "closes_at_ms", "0", "per_user_limit", "100", "hold_ttl_ms", "3600000",
      "ST", capacity, SEGMENTS[seats], "GA", "20000", "")
    r("eval", "local d = redis.call('TIME')[1] * 1000 + 3600000 "
      "for i = 0, 9999 do redis.call('ZADD', KEYS[1], d, 'u' .. i) end", "1", h + ":admitted")


HARNESS = """
local function hold(K, A)
%s
end
local seated, ga, qty, mode, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local function keys(s, u)
  return {s .. ':meta', s .. ':zones', s .. ':res:' .. u, s .. ':buyer:' .. u, s .. ':deadlines',
    s .. ':admitted', s .. ':turns', s .. ':seats', s .. ':seatmap'}
end
local function us(a, b) return (b[1] - a[1]) * 1e6 + (b[2] - a[2]) end
local t_ga, t_seated = 0, 0
for i = 0, n - 1 do
  local u = 'u' .. i
  local args = {u, 'ST', qty, u, '', mode}
  if mode == 'x' then -- two neighbours, each row in turn
    local row, s = 'R' .. (i %% 100), 2 * math.floor(i / 100) + 1
    args[6] = 'x:' .. row .. '-' .. s .. ',' .. row .. '-' .. (s + 1)
    args[7], args[8], args[9], args[10] = row, tostring(s), row, tostring(s + 1)
  end
  local ka, kb = keys(ga, u), keys(seated, u)
  local t0 = redis.call('TIME')
  local a = hold(ka, {u, 'GA', qty, u, '', ''})
  local t1 = redis.call('TIME')
  local b = hold(kb, args)
  local t2 = redis.call('TIME')
  if a[1] ~= 'new' or b[1] ~= 'new' then return {'failed', i, a[2], b[2], b[3]} end
  -- The seats listed: as many as asked for.
  local _, commas = string.gsub(b[4], ',', ',')
  if commas ~= tonumber(qty) - 1 then return {'failed', i, b[4]} end
  t_ga, t_seated = t_ga + us(t0, t1), t_seated + us(t1, t2)
end
return string.format('%%.2f %%.2f', t_ga / n, t_seated / n)
""" % body

print("seated holds against general admission, interleaved, %d rounds (us a hold, TIME included):"
      % rounds)
for name, qty, mode, n, layout in KINDS:
    ratios, gas, seats = [], [], []
    for _ in range(rounds):
        fresh_sales(layout)
        out = r("eval", HARNESS, "0", "{seated}", "{ga}", qty, mode, str(n))
        try:
            a, b = map(float, out.split())
        except ValueError:
            sys.exit("seats_ab: %s: %s" % (name, out))
        gas.append(a)
        seats.append(b)
        ratios.append(b / a)
    report(name, gas, seats, ratios, "%6.2f", "seated/GA")


def resp(args):
    return ("*%d\r\n" % len(args) + "".join(
        "$%d\r\n%s\r\n" % (len(a.encode()), a) for a in args)).encode()


class Conn:
    """A bare RESP connection: enough to pipeline calls and read replies."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", int(port)))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode(errors="replace")
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise ValueError(line)

    def call(self, *args):
        self.sock.sendall(resp(list(args)))
        return self.reply()


hold_sha = r("script", "load", source)


def hold_call(sale, zone, qty, mode, i):
    """Hold i of a round as an EVALSHA call: buyer and reservation u<i>."""
    u = "u%d" % i
    pick = pick_args(mode, i) if zone == "ST" else [""]
    return resp(["EVALSHA", hold_sha, "9", sale + ":meta", sale + ":zones", sale + ":res:" + u,
                 sale + ":buyer:" + u, sale + ":deadlines", sale + ":admitted", sale + ":turns",
                 sale + ":seats", sale + ":seatmap", u, zone, qty, u, ""] + pick)


print("the same holds as EVALSHA calls in turn, Redis's time a call from its slow log "
      "(us, median of the rounds' means):")
for name, qty, mode, n, layout in KINDS:
    ratios, gas, seats = [], [], []
    for _ in range(rounds):
        fresh_sales(layout)
        c = Conn(port)
        c.call("config", "set", "slowlog-log-slower-than", "0")
        c.call("config", "set", "slowlog-max-len", str(2 * n + 10))
        c.call("slowlog", "reset")
        calls = [hold_call(sale, zone, qty, mode, i)
                 for i in range(n) for sale, zone in (("{ga}", "GA"), ("{seated}", "ST"))]
        c.sock.sendall(b"".join(calls))
        replies = [c.reply() for _ in range(2 * n)]
        bad = [x for x in replies if not isinstance(x, list) or x[0] != "new"]
        c.call("config", "set", "slowlog-log-slower-than", "10000")
        if bad:
            sys.exit("seats_ab: %s: a hold failed: %s" % (name, bad[0]))
        log = c.call("slowlog", "get", str(2 * n + 10))
        took = {"GA": [], "ST": []}
        for entry in log:
            args = entry[3]
            if args and args[0].upper() == "EVALSHA" and len(args) > 13:
                took[args[13]].append(entry[2])
        a, b = statistics.mean(took["GA"]), statistics.mean(took["ST"])
        gas.append(a)
        seats.append(b)
        ratios.append(b / a)
    report(name, gas, seats, ratios, "%6.2f", "seated/GA")

BATCH = 500
print("holds a second one Redis serves, pipelined EVALSHA calls in batches of %d, the two "
      "kinds' batches in turn (median of the rounds):" % BATCH)
for name, qty, mode, n, layout in KINDS:
    ratios, gas, seats = [], [], []
    for _ in range(rounds):
        fresh_sales(layout)
        c = Conn(port)
        took = {"GA": 0.0, "ST": 0.0}
        for start in range(0, n, BATCH):
            for sale, zone in (("{ga}", "GA"), ("{seated}", "ST")):
                calls = [hold_call(sale, zone, qty, mode, i)
                         for i in range(start, min(n, start + BATCH))]
                payload = b"".join(calls) + resp(["PING"])
                # The replies are read as bytes until the PING's, and checked
                # after the clock stops.
                t0 = time.perf_counter()
                c.sock.sendall(payload)
                while not c.buf.endswith(b"+PONG\r\n"):
                    c.buf += c.sock.recv(1 << 20)
                took[zone] += time.perf_counter() - t0
                replies = [c.reply() for _ in range(len(calls))]
                c.reply()
                bad = [x for x in replies if not isinstance(x, list) or x[0] != "new"]
                if bad:
                    sys.exit("seats_ab: %s: a hold failed: %s" % (name, bad[0]))
        a, b = n / took["GA"], n / took["ST"]
        gas.append(a)
        seats.append(b)
        ratios.append(a / b)
    report(name, gas, seats, ratios, "%6.0f/s", "GA/seated")
