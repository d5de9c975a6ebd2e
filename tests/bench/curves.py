# ruff: noqa: T201
"""Scaling curves, each point next to a baseline taken in the same run (`scripts/bench
--curves [--json PATH]`):

- warm list req/s and p99 at 10k / 100k / 1M sessions, beside bare bytes from memory
  (and the cold first request per workspace);
- SSE replay time against the number of events replayed (100 ... the long session);
- fan-out deliveries/s and p99 at 100 / 1,000 / 5,000 subscribers of one session at
  BENCH_FANOUT_RATE events/s (default 50): the bare encode-once server, the product on one
  gateway, and on two gateways (one per core; the second gets its events through Redis).

Sizes: BENCH_CURVE_SESSIONS (default 10k,100k,1M), BENCH_CURVE_SUBSCRIBERS (default
100,1000,5000), BENCH_EVENTS for the replay log (default 1M) and BENCH_LONG for its
longest session (default 100k). Figures only.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench import suite
from tests.bench.eventlog_scale import (
    cleanup,
    eventlog_run,
    list_curve,
    new_ctx,
    parse_size,
)


def sizes(name: str, default: str) -> list[int]:
    return [parse_size(s) for s in os.environ.get(name, default).split(",")]


async def _bare_point(
    ctx: suite.Ctx, subs: int, rate: int, count: int
) -> dict[str, Any]:
    port = suite.free_port()
    bare = await suite.start(
        ctx, ["-m", "tests.bench.bare", str(port), "/dev/null"], port, "/bytes"
    )
    try:
        clients = suite.Clients(
            ctx, f"http://127.0.0.1:{port}/events", subs, 2, count, suite.DURATION + 20
        )
        await clients.ready()
        clients.go()
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{port}/produce?rate={rate}&count={count}") as r,
        ):
            await r.read()
        received, lat = await clients.results()
        wall = time.monotonic() - t0
    finally:
        suite.stop(ctx, bare)
    return _point(received, lat, subs * count, wall)


def _point(received: int, lat: list[int], expected: int, wall: float) -> dict[str, Any]:
    """deliveries_per_s is over the paced window; wall_deliveries_per_s over the time the
    clients took to get them (longer than the window when the server fell behind)."""
    return {
        "deliveries_per_s": received / suite.DURATION,
        "wall_deliveries_per_s": received / wall if wall else 0.0,
        "delivered": received / expected if expected else 0.0,
        "p50_ms": suite.pct(lat, 50) / 1000,
        "p99_ms": suite.pct(lat, 99) / 1000,
    }


async def _product_point(
    ctx: suite.Ctx, gateways: list[int], subs: int, rate: int, count: int
) -> dict[str, Any]:
    """One paced session on the first gateway; subscribers split over all of them."""
    async with aiohttp.ClientSession() as s:
        sid = await suite.new_pace_session(s, gateways[0], "bench-ws-001")
        groups = []
        per = [
            subs // len(gateways) + (i < subs % len(gateways))
            for i in range(len(gateways))
        ]
        for gw, n in zip(gateways, per, strict=True):
            groups.append(
                suite.Clients(
                    ctx,
                    f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}",
                    n,
                    2,
                    count,
                    suite.DURATION + 20,
                )
            )
        for g in groups:
            await g.ready()
        for g in groups:
            g.go()
        t0 = time.monotonic()
        await suite.prompt(s, gateways[0], sid, f"pace {rate} {count}")
        received, lat = 0, []
        for g in groups:
            r, lt = await g.results()
            received += r
            lat += lt
        wall = time.monotonic() - t0
        with contextlib.suppress(Exception):
            await suite.rpc(s, gateways[0], "session/cancel", {"sessionId": sid})
    return _point(received, lat, subs * count, wall)


async def fanout_curve(subscribers: list[int], rate: int) -> list[dict[str, Any]]:
    rows = []
    async with suite.Database() as db:
        ctx = new_ctx(db.url)
        try:
            await suite.seed_sessions(ctx)
            ports = [suite.free_port(), suite.free_port()]
            for port, core in zip(
                ports, (suite.SERVER_CORE, suite.CLIENT_CORE), strict=True
            ):
                # LEASE_TTL 60: at 5,000 subscribers on one core with the default 15 s the
                # owner once missed its renewal and the idle peer took the session over
                await suite.start(
                    ctx,
                    ["-m", "services.gateway"],
                    port,
                    "/healthz",
                    core=core,
                    LEASE_TTL="60",
                )
            count = int(rate * suite.DURATION)
            for subs in subscribers:
                suite.progress(f"fan-out curve: {subs} subscribers x {rate}/s")
                bare = await _bare_point(ctx, subs, rate, count)
                one = await _product_point(ctx, ports[:1], subs, rate, count)
                two = await _product_point(ctx, ports, subs, rate, count)
                rows.append(
                    {
                        "subscribers": subs,
                        "rate": rate,
                        "offered_deliveries_per_s": subs * rate,
                        "bare": bare,
                        "one_gateway": one,
                        "two_gateways": two,
                        "one_ratio": one["deliveries_per_s"] / bare["deliveries_per_s"],
                        "two_ratio": two["deliveries_per_s"] / bare["deliveries_per_s"],
                    }
                )
        finally:
            await cleanup(ctx)
    return rows


def tables(result: dict[str, Any]) -> str:
    out = []
    if "list" in result:
        out.append(
            "| sessions | bare bytes req/s | list req/s | ratio | p99 ms (bare) | cold p50 / p99 ms |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|")
        for r in result["list"]:
            w, c = r["list_warm"], r["list_cold"]
            out.append(
                f"| {r['sessions']:,} | {w['bare_rps']:,.0f} | {w['rps']:,.0f} | {w['ratio']:.0%} "
                f"| {w['p99_ms']:.1f} ({w['bare_p99_ms']:.1f}) | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} |"
            )
    if "replay" in result:
        out.append("\n| events replayed | seconds | events/s | MB |")
        out.append("|---:|---:|---:|---:|")
        for depth, r in sorted(result["replay"].items(), key=lambda kv: int(kv[0])):
            out.append(
                f"| {int(depth):,} | {r['seconds']:.3f} | {int(depth) / r['seconds']:,.0f} | {r['bytes'] / 1e6:.1f} |"
            )
    if "fanout" in result:
        out.append(
            "\n| subscribers x ev/s | bare deliveries/s (p99 ms) | 1 gateway (p99 ms) | ratio "
            "| 2 gateways (p99 ms) | ratio |"
        )
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in result["fanout"]:
            b, o, t = r["bare"], r["one_gateway"], r["two_gateways"]
            out.append(
                f"| {r['subscribers']:,} x {r['rate']} | {b['deliveries_per_s']:,.0f} ({b['p99_ms']:.0f}) "
                f"| {o['deliveries_per_s']:,.0f} ({o['p99_ms']:.0f}) | {r['one_ratio']:.0%} "
                f"| {t['deliveries_per_s']:,.0f} ({t['p99_ms']:.0f}) | {r['two_ratio']:.0%} |"
            )
    return "\n".join(out)


async def run(parts: set[str], json_path: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": suite.machine(), "duration": suite.DURATION}
    t0 = time.monotonic()

    def save() -> None:  # after each part: a failure later keeps what was measured
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")

    if "list" in parts:
        result["list"] = await list_curve(sizes("BENCH_CURVE_SESSIONS", "10k,100k,1M"))
        save()
    if "replay" in parts:
        events = parse_size(os.environ.get("BENCH_EVENTS", "1M"))
        long = parse_size(os.environ.get("BENCH_LONG", "100k"))
        log = await eventlog_run(events, max(10, events // 100), long_events=long)
        result["replay"] = log["replay"]
        result["eventlog"] = log
        save()
    if "fanout" in parts:
        rate = int(os.environ.get("BENCH_FANOUT_RATE", "50"))
        result["fanout"] = await fanout_curve(
            sizes("BENCH_CURVE_SUBSCRIBERS", "100,1000,5000"), rate
        )
    result["seconds"] = time.monotonic() - t0
    save()
    return result


def main(argv: list[str]) -> None:
    import uvloop

    json_path = None
    parts = {"list", "replay", "fanout"}
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--json":
            json_path = args.pop(0)
        elif a == "--only":
            parts = set(args.pop(0).split(","))
    os.sched_setaffinity(0, {int(suite.CLIENT_CORE)})
    result = uvloop.run(run(parts, json_path))
    print(
        f"\nRouta scaling curves — {result['machine']}, BENCH_DURATION={suite.DURATION:g}s\n"
    )
    print(tables(result))
