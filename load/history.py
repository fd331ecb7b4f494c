#!/usr/bin/env python3
"""Sales that ran and ended, for a load run against a Redis with history.

    history.py BASE_URL ORGANIZER_TOKEN BUYER_TOKENS_FILE COUNT

Creates COUNT small sales through the API. In each, two buyers (tokens from
BUYER_TOKENS_FILE, one a line, two a sale) join the queue, are admitted by
the running workers, hold a ticket and confirm it; then the organizer closes
the sale. Prints a line when every sale is closed. The workers' archiver then
takes them out of Redis: load/run.sh waits for that (ARCHIVED_SALES).
"""

import json
import sys
import time
import urllib.request


def call(method, url, token, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as res:
        text = res.read()
        return json.loads(text) if text else None


def main():
    base, org, tokens_file, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tokens = [line.strip() for line in open(tokens_file) if line.strip()]
    if len(tokens) < 2 * count:
        sys.exit(f"history: {2 * count} buyer tokens needed, {len(tokens)} given")
    sales = []
    for i in range(count):
        sale = call("POST", f"{base}/v1/sales", org, {
            "name": f"past sale {i}",
            "zones": [{"code": "A", "capacity": 10}],
            "release_rate": 100, "release_interval_ms": 100,
        })["id"]
        buyers = tokens[2 * i:2 * i + 2]
        for t in buyers:
            call("POST", f"{base}/v1/sales/{sale}/queue", t, {})
        sales.append((sale, buyers))
    confirmed = 0
    for sale, buyers in sales:
        for t in buyers:
            for _ in range(200):
                status = call("GET", f"{base}/v1/sales/{sale}/queue", t)
                if status["state"] == "admitted":
                    break
                time.sleep(0.05)
            else:
                sys.exit(f"history: a buyer of sale {sale} was not admitted: {status}")
            held = call("POST", f"{base}/v1/sales/{sale}/reservations", t,
                        {"zone": "A", "quantity": 1}, {"X-Queue-Pass": status["pass"]})
            call("POST", f"{base}/v1/reservations/{held['id']}/confirm", t, {})
            confirmed += 1
        call("PATCH", f"{base}/v1/sales/{sale}", org, {"state": "closed"})
    print(f"history: {count} sales ran ({confirmed} tickets confirmed) and closed", file=sys.stderr)


if __name__ == "__main__":
    main()
