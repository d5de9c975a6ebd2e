# ruff: noqa: T201
"""SSE subscribers for the fan-out and hop scenarios, run as a separate process.

argv: url count expected_events deadline_s out_path. Prints "ready" once every stream is
open and has a first frame, then reads until each stream saw `expected_events` stamped
chunks or the deadline; writes "received <n>" and the latencies (µs, from the due time in
each chunk's text) to out_path as one int per line.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from array import array

import aiohttp
import uvloop

STAMP = re.compile(rb'"text":"(\d{6,})"')


async def one(session, url, expected, lat, ready, counts, idx, stop, rejected) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        if resp.status != 200:  # e.g. 429 past MAX_SUBSCRIBERS: not a subscriber
            rejected.append(resp.status)
        ready.release()
        buf = b""
        got = 0
        async for data in resp.content.iter_any():
            now = time.monotonic_ns()
            buf += data
            frames = buf.split(b"\n\n")
            buf = frames.pop()
            for frame in frames:
                m = STAMP.search(frame)
                if m:
                    lat.append((now - int(m.group(1))) // 1000)
                    got += 1
            counts[idx] = got
            if got >= expected or stop.is_set():
                return


async def main() -> None:
    url, n, expected, deadline, out = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
        sys.argv[5],
    )
    lat: array = array("q")
    counts = [0] * n
    ready = asyncio.Semaphore(0)
    stop = asyncio.Event()
    rejected: list[int] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = [
            asyncio.create_task(
                one(session, url, expected, lat, ready, counts, i, stop, rejected)
            )
            for i in range(n)
        ]
        for _ in range(n):
            await ready.acquire()
        if rejected:
            print(
                f"rejected {len(rejected)} streams: {sorted(set(rejected))}", flush=True
            )
        else:
            print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # go
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            stop.set()
            for t in tasks:
                t.cancel()
    with open(out, "w") as fh:
        fh.write(f"received {sum(counts)}\n")
        fh.write("\n".join(map(str, lat)))


if __name__ == "__main__":
    uvloop.run(main())
