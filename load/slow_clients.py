"""Slow clients against a running API (load/slow_clients.sh starts it).

TRICKLERS connections each send a request line, then one header byte every
TRICKLE_SECONDS and never finish the head. While they hang on, NORMAL
ordinary requests (GET /health, each on a new connection, one after the
other) are timed: their p99 must stay under P99_LIMIT_MS. Every trickler
must be closed by the server within the header-read timeout (plus
SLACK_SECONDS). The same NORMAL requests are timed first with no trickler,
for comparison.

Usage: python3 load/slow_clients.py HOST PORT HEADER_READ_TIMEOUT_SECONDS
Environment: TRICKLERS (3000), NORMAL (200), TRICKLE_SECONDS (5),
P99_LIMIT_MS (200), SLACK_SECONDS (2).
"""

import asyncio
import os
import sys
import time

HOST, PORT, TIMEOUT = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
TRICKLERS = int(os.environ.get("TRICKLERS", 3000))
NORMAL = int(os.environ.get("NORMAL", 200))
TRICKLE = float(os.environ.get("TRICKLE_SECONDS", 5))
P99_LIMIT_MS = float(os.environ.get("P99_LIMIT_MS", 200))
SLACK = float(os.environ.get("SLACK_SECONDS", 2))


async def trickler(opened, closed_after):
    """One slow client: the time from its connection to the server's close."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    start = time.monotonic()
    writer.write(b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
    await writer.drain()
    opened.append(start)

    async def trickle():
        while True:
            await asyncio.sleep(TRICKLE)
            writer.write(b"x")
            await writer.drain()

    sender = asyncio.create_task(trickle())
    try:
        # The server closes (EOF), or resets: either ends the read.
        data = await asyncio.wait_for(reader.read(1024), TIMEOUT * 3 + TRICKLE * 2)
        if data:
            raise RuntimeError(f"the server answered a trickled header: {data[:80]!r}")
        closed_after.append(time.monotonic() - start)
    except (ConnectionError, OSError):
        closed_after.append(time.monotonic() - start)
    except asyncio.TimeoutError:
        pass  # never closed: counted as such below
    finally:
        sender.cancel()
        writer.close()


async def normal_request():
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(b"GET /health HTTP/1.1\r\nHost: normal\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"a normal request failed: {answer[:80]!r}")
    return (time.monotonic() - start) * 1000


async def timed(n, spacing):
    times = []
    for _ in range(n):
        times.append(await normal_request())
        await asyncio.sleep(spacing)
    return times


def summary(times):
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {times[-1]:.1f} ms"


async def main():
    baseline = await timed(NORMAL, 0.01)
    print(f"slow_clients: {NORMAL} normal requests, no slow clients: {summary(baseline)}")
    opened, closed_after = [], []
    tasks = []
    for i in range(TRICKLERS):
        tasks.append(asyncio.create_task(trickler(opened, closed_after)))
        if i % 100 == 99:
            await asyncio.sleep(0.01)
    while len(opened) < TRICKLERS:
        await asyncio.sleep(0.05)
    print(f"slow_clients: {TRICKLERS} connections open, each trickling a header byte every {TRICKLE:g} s")
    # Spread over most of the timeout, while every trickler is still open.
    under_load = await timed(NORMAL, max(0.0, TIMEOUT * 0.6 / NORMAL))
    await asyncio.gather(*tasks)
    print(f"slow_clients: {NORMAL} normal requests beside them: {summary(under_load)}")
    never = TRICKLERS - len(closed_after)
    latest = max(closed_after) if closed_after else float("nan")
    earliest = min(closed_after) if closed_after else float("nan")
    print(f"slow_clients: {len(closed_after)} of {TRICKLERS} slow connections closed by the server, "
          f"{earliest:.1f} s to {latest:.1f} s after opening (header-read timeout {TIMEOUT:g} s)")
    failed = []
    p99 = sorted(under_load)[min(len(under_load) - 1, int(0.99 * len(under_load)))]
    if p99 >= P99_LIMIT_MS:
        failed.append(f"p99 {p99:.1f} ms is not under {P99_LIMIT_MS:g} ms")
    if never:
        failed.append(f"{never} slow connections were never closed")
    if closed_after and latest > TIMEOUT + SLACK:
        failed.append(f"a slow connection lasted {latest:.1f} s, past {TIMEOUT:g} s + {SLACK:g} s")
    if failed:
        print("slow_clients: FAILED: " + "; ".join(failed))
        sys.exit(1)
    print("slow_clients: ok")


asyncio.run(main())
