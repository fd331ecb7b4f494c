#!/usr/bin/env python3
"""Prints a k6 run's figures as one results-table row and per-request lines.

    python3 load/summary.py summary.json

Reads the file k6 writes with --summary-export (trend stats avg, med,
p(95), p(99), max).
"""
import json
import sys

m = json.load(open(sys.argv[1]))["metrics"]


def val(name, key, default=0):
    return m.get(name, {}).get(key, default)


d = m["http_req_duration"]
reqs = val("http_reqs", "count")
rate = val("http_reqs", "rate")
iters = val("iterations", "count")
dropped = val("dropped_iterations", "count")
planned = iters + dropped
errors = val("flashsale_server_errors", "count")
wrong = val("flashsale_unexpected_status", "count")
print(f"k6: {reqs:.0f} requests, {rate:.0f} req/s; p50 {d['med']:.2f} ms, p95 {d['p(95)']:.2f} ms, "
      f"p99 {d['p(99)']:.2f} ms, max {d['max']:.1f} ms; 5xx/transport errors {errors:.0f}, "
      f"unexpected statuses {wrong:.0f}; 503 in the chaos outage {val('flashsale_unavailable', 'count'):.0f}; dropped iterations {dropped:.0f} "
      f"({100 * dropped / planned if planned else 0:.2f}%); confirmations {val('flashsale_confirmed', 'count'):.0f}")
for name in ("poll", "join", "hold", "confirm", "cancel"):
    t = m.get(f"http_req_duration{{name:{name}}}")
    if t:
        print(f"  {name:<8} p50 {t['med']:.2f} ms  p95 {t['p(95)']:.2f} ms  p99 {t['p(99)']:.2f} ms  max {t['max']:.1f} ms")
