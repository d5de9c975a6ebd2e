# ruff: noqa: T201
"""Scaling curves, each point next to a baseline taken in the same run (`scripts/bench
--curves [--json PATH] [--only PARTS] [--no-plots]`):

- list: warm list req/s and p99 at 10k / 100k / 1M sessions, beside bare bytes from memory
  (and the cold first request per workspace);
- replay: SSE replay time against the number of events replayed (100 ... the long session)
  for each log size of BENCH_EVENTS, beside the same rows read straight from Postgres;
- fanout: deliveries/s and p99 at 100 / 1,000 / 5,000 subscribers of one session at
  BENCH_FANOUT_RATE events/s (default 50): the bare encode-once server, the product on one
  gateway, and on two gateways (one per core; the second gets its events through Redis);
- streams: events/s stored+published by one gateway while 1 / 10 / 100 / 1,000 sessions
  stream at once (each agent floods, one SSE client per session), beside `COPY` in batches
  of 50 in the same run; also the memory each live session costs (gateway and agent);
- search: the fan-out targets at BENCH_SEARCH_SUBSCRIBERS (1,000) subscribers: the highest
  offered rate each side sustains (everything delivered, p99 <= 100 ms), found by doubling
  then bisection, for the bare encode-once server (the ceiling) and one gateway; then both
  at 50% of that ceiling (target p99 <= 50 ms).

The figures go to docs/benchmarks/curves.json (or --json PATH), saved after each part, and
tests/bench/plots.py draws one PNG per curve beside it when matplotlib is installed
(`pip install -e .[bench]`; re-plot with `python -m tests.bench.plots PATH`).

Sizes: BENCH_CURVE_SESSIONS (default 10k,100k,1M), BENCH_CURVE_SUBSCRIBERS (default
100,1000,5000), BENCH_EVENTS for the replay logs (default 1M; a list such as 1M,10M gives
one line per size), BENCH_LONG for their longest session (default 100k),
BENCH_CURVE_STREAMS (default 1,10,100,1000) and BENCH_STREAM_EVENTS (events of one step,
split over its sessions, default 50k), BENCH_SEARCH_SUBSCRIBERS (default 1000),
BENCH_SEARCH_START (events/s of the first probe, default 10), BENCH_SEARCH_STEPS (bisection
steps, default 4). Figures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.bench import suite
from tests.bench.eventlog_gen import load
from tests.bench.eventlog_scale import (
    cleanup,
    list_curve,
    new_ctx,
    parse_size,
    sse_replay,
    start_services,
)

DEFAULT_JSON = suite.ROOT / "docs" / "benchmarks" / "curves.json"
PARTS = ("list", "replay", "fanout", "streams", "search")
# the fan-out targets: at 50% of the ceiling, and the p99 a "sustained" rate must keep
HALF_P99_MS = 50.0
SUSTAINED_P99_MS = 100.0
SEARCH_TARGET_RATIO = 0.8


def sizes(name: str, default: str) -> list[int]:
    return [parse_size(s) for s in os.environ.get(name, default).split(",")]


# --- fan-out points ---------------------------------------------------------------------


async def _bare_point(
    ctx: suite.Ctx, subs: int, rate: float, count: int, deadline: float | None = None
) -> dict[str, Any]:
    port = suite.free_port()
    bare = await suite.start(
        ctx, ["-m", "tests.bench.bare", str(port), "/dev/null"], port, "/bytes"
    )
    try:
        clients = suite.Clients(
            ctx,
            f"http://127.0.0.1:{port}/events",
            subs,
            2,
            count,
            deadline or suite.DURATION + 20,
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
    return _point(received, lat, subs * count, wall, count / rate)


def _point(
    received: int, lat: list[int], expected: int, wall: float, window: float
) -> dict[str, Any]:
    """deliveries_per_s is over the paced window; wall_deliveries_per_s over the time the
    clients took to get them (longer than the window when the server fell behind)."""
    return {
        "deliveries_per_s": received / window,
        "wall_deliveries_per_s": received / wall if wall else 0.0,
        "delivered": received / expected if expected else 0.0,
        "p50_ms": suite.pct(lat, 50) / 1000,
        "p99_ms": suite.pct(lat, 99) / 1000,
    }


async def _product_point(
    ctx: suite.Ctx,
    gateways: list[int],
    subs: int,
    rate: float,
    count: int,
    deadline: float | None = None,
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
                    deadline or suite.DURATION + 20,
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
    return _point(received, lat, subs * count, wall, count / rate)


async def _start_gateways(ctx: suite.Ctx, n: int, **env: str) -> list[int]:
    ports = [suite.free_port() for _ in range(n)]
    for port, core in zip(ports, (suite.SERVER_CORE, suite.CLIENT_CORE), strict=False):
        # the default LEASE_TTL: its renewal runs in a thread of its own, so a saturated
        # owner keeps its sessions (it once lost one at 5,000 subscribers)
        await suite.start(
            ctx,
            ["-m", "services.gateway"],
            port,
            "/healthz",
            core=core,
            **env,
        )
    return ports


async def fanout_curve(subscribers: list[int], rate: int) -> list[dict[str, Any]]:
    rows = []
    async with suite.Database() as db:
        ctx = new_ctx(db.url)
        try:
            await suite.seed_sessions(ctx)
            ports = await _start_gateways(ctx, 2)
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


# --- the fan-out targets: a search over offered rates -------------------------------------


def sustained(point: dict[str, Any]) -> bool:
    """Held: every delivery arrived and the p99 stayed within SUSTAINED_P99_MS."""
    return bool(point["delivered"] >= 1.0 and point["p99_ms"] <= SUSTAINED_P99_MS)


async def highest_sustained(
    probe: Callable[[float], Awaitable[dict[str, Any]]],
    start: float,
    steps: int,
    label: str,
) -> tuple[float, list[dict[str, Any]]]:
    """The highest offered events/s that `probe` sustains: double from `start` until a
    probe fails, then bisect between the last rate held and the first that was not for
    `steps` more probes (or until they are within 5%). 0 when even `start`/2**4 fails."""
    probes: list[dict[str, Any]] = []

    async def run(rate: float) -> bool:
        point = await probe(rate)
        point["rate"] = rate
        point["sustained"] = sustained(point)
        probes.append(point)
        suite.progress(
            f"  {label} {rate:,.1f} ev/s: delivered {point['delivered']:.1%}, "
            f"p99 {point['p99_ms']:,.1f} ms -> {'held' if point['sustained'] else 'not held'}"
        )
        return bool(point["sustained"])

    lo, hi, rate = 0.0, 0.0, start
    if await run(rate):
        lo = rate
        while hi == 0.0 and rate < start * 2**10:
            rate *= 2
            if await run(rate):
                lo = rate
            else:
                hi = rate
    else:  # the first rate is already too high: halve down a few times
        hi = rate
        for _ in range(4):
            rate /= 2
            if await run(rate):
                lo = rate
                break
            hi = rate
    for _ in range(steps):
        if lo == 0.0 or hi == 0.0 or (hi - lo) / hi < 0.05:
            break
        mid = (lo + hi) / 2
        if await run(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


async def fanout_search(subs: int, start: float, steps: int) -> dict[str, Any]:
    """The two fan-out targets at `subs` subscribers on one gateway, against the bare
    encode-once server of the same run (see docs/benchmarks.md, "The fan-out targets")."""
    out: dict[str, Any] = {
        "subscribers": subs,
        "sustained_p99_ms": SUSTAINED_P99_MS,
        "half_p99_ms": HALF_P99_MS,
        "target_ratio": SEARCH_TARGET_RATIO,
    }
    deadline = suite.DURATION + 5  # a rate that is not held fails fast

    def count(rate: float) -> int:
        return max(10, int(rate * suite.DURATION))

    async with suite.Database() as db:
        ctx = new_ctx(db.url)
        try:
            await suite.seed_sessions(ctx)
            (port,) = await _start_gateways(ctx, 1)

            async def bare(rate: float) -> dict[str, Any]:
                return await _bare_point(ctx, subs, rate, count(rate), deadline)

            async def product(rate: float) -> dict[str, Any]:
                return await _product_point(
                    ctx, [port], subs, rate, count(rate), deadline
                )

            suite.progress(f"fan-out search: the bare ceiling at {subs} subscribers")
            bare_rate, out["bare_probes"] = await highest_sustained(
                bare, start, steps, "bare"
            )
            suite.progress(f"fan-out search: one gateway at {subs} subscribers")
            prod_rate, out["product_probes"] = await highest_sustained(
                product, start, steps, "gateway"
            )
            ceiling = bare_rate * subs
            out["bare_ceiling_rate"] = bare_rate
            out["bare_ceiling_deliveries_per_s"] = ceiling
            out["product_max_rate"] = prod_rate
            out["product_max_deliveries_per_s"] = prod_rate * subs
            out["ratio"] = prod_rate / bare_rate if bare_rate else 0.0
            half = bare_rate / 2
            out["half_rate"] = half
            if half > 0:
                suite.progress(f"fan-out search: both sides at 50% ({half:,.1f} ev/s)")
                out["half_bare"] = await bare(half)
                out["half_product"] = await product(half)
        finally:
            await cleanup(ctx)
    return out


def search_rows(s: dict[str, Any]) -> list[suite.Row]:
    """The targets' rows, in the suite's table layout."""
    subs = s["subscribers"]
    rows = [
        suite.Row(
            f"3 fan-out {subs} subs: max deliveries/s at p99 <= {s['sustained_p99_ms']:g} ms",
            f"{s['bare_ceiling_deliveries_per_s']:,.0f}",
            f"{s['product_max_deliveries_per_s']:,.0f}",
            f"{s['ratio']:.0%}",
            f">= {s['target_ratio']:.0%}",
            suite.yes(s["ratio"] >= s["target_ratio"]),
        )
    ]
    if "half_product" in s:
        b, p = s["half_bare"], s["half_product"]
        rows += [
            suite.Row(
                f"3 fan-out {subs} subs @50% of ceiling ({s['half_rate'] * subs:,.0f}/s) p50 / p99 ms",
                f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f}",
                f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f}",
                "",
                f"p99 <= {s['half_p99_ms']:g}",
                suite.yes(p["p99_ms"] <= s["half_p99_ms"]),
            ),
            suite.Row(
                f"3 fan-out {subs} subs @50% of ceiling delivered",
                f"{b['delivered']:.1%}",
                f"{p['delivered']:.1%}",
                "",
                "100%",
                suite.yes(p["delivered"] >= 1.0),
            ),
        ]
    return rows


# --- events/s against concurrently streaming sessions ------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the gateway's agents, whatever wraps them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages split between their users) of one process, in KiB."""
    out = {"rss": 0, "pss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(line.split()[1])
    return out


def live_memory(gateway_pid: int) -> dict[str, float]:
    """The gateway's own memory and its agents' together, in KiB."""
    agents = [memory_kib(p) for p in descendants(gateway_pid)]
    gw = memory_kib(gateway_pid)
    return {
        "gateway_rss_kib": gw["rss"],
        "gateway_pss_kib": gw["pss"],
        "agents": len(agents),
        "agents_rss_kib": sum(a["rss"] for a in agents),
        "agents_pss_kib": sum(a["pss"] for a in agents),
    }


async def _count_stream(
    s: aiohttp.ClientSession, url: str, expected: int, opened: asyncio.Queue[int]
) -> int:
    """Chunks received on one SSE stream, until `expected` of them arrived."""
    async with s.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
        opened.put_nowait(1)
        buf, got = b"", 0
        async for data in r.content.iter_any():
            buf += data
            frames = buf.split(b"\n\n")
            buf = frames.pop()
            got += sum(1 for f in frames if b"agent_message_chunk" in f)
            if got >= expected:
                break
    return got


async def _heads(db_url: str, sids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT session_id::text AS sid, last_event_id FROM sessions"
            " WHERE session_id = ANY($1::uuid[])",
            [uuid.UUID(s) for s in sids],
        )
    finally:
        await conn.close()
    return {r["sid"]: int(r["last_event_id"]) for r in rows}


async def _stream_step(
    ctx: suite.Ctx, gw: int, sids: list[str], per_session: int
) -> dict[str, Any]:
    """Every session floods `per_session` chunks at once; one SSE client each, from the
    session's current head. events/s over the time from the first prompt to the last chunk
    seen, as scenario 2 measures one session."""
    heads = await _heads(ctx.db_url, sids)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        opened: asyncio.Queue[int] = asyncio.Queue()
        readers = [
            asyncio.create_task(
                _count_stream(
                    s,
                    f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}&lastEventId={heads[sid]}",
                    per_session,
                    opened,
                )
            )
            for sid in sids
        ]
        async with asyncio.timeout(120):
            for _ in sids:
                await opened.get()
        t0 = time.monotonic()
        async with asyncio.timeout(max(300.0, 60 + len(sids) * per_session / 1000)):
            prompts = asyncio.gather(
                *(suite.prompt(s, gw, sid, f"flood {per_session}") for sid in sids)
            )
            received = sum(await asyncio.gather(*readers))
            elapsed = time.monotonic() - t0
            await prompts
    after = await _heads(ctx.db_url, sids)
    return {
        "sessions": len(sids),
        "events_per_session": per_session,
        "received": received,
        "stored": sum(after[sid] - heads[sid] for sid in sids),
        "seconds": elapsed,
        "events_per_s": received / elapsed if elapsed else 0.0,
    }


async def streams_curve(counts: list[int], total: int) -> dict[str, Any]:
    """events/s stored+published by one gateway against sessions streaming at once, beside
    the COPY-in-batches-of-50 rate of the same database; and memory per live session."""
    out: dict[str, Any] = {"points": []}
    async with suite.Database() as db:
        ctx = new_ctx(db.url)
        try:
            await suite.seed_sessions(ctx)
            out["copy_baseline_per_s"] = await suite.copy_baseline(ctx)
            port = suite.free_port()
            gateway = await suite.start(
                ctx,
                ["-m", "services.gateway"],
                port,
                "/healthz",
                MAX_SESSIONS=str(max(counts) + 10),
            )
            out["idle"] = live_memory(gateway.pid)
            sids: list[str] = []
            gate = asyncio.Semaphore(8)  # agents start 8 at a time

            async def new(s: aiohttp.ClientSession) -> str:
                async with gate:
                    return await suite.new_pace_session(s, port, "bench-ws-003")

            for n in sorted(counts):
                suite.progress(f"streams curve: {n:,} session(s) streaming at once")
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0)
                ) as s:
                    sids += await asyncio.gather(
                        *(new(s) for _ in range(n - len(sids)))
                    )
                mem = live_memory(gateway.pid)
                point = await _stream_step(ctx, port, sids, max(20, total // n))
                point["memory"] = mem
                point["gateway_kib_per_session"] = (
                    mem["gateway_rss_kib"] - out["idle"]["gateway_rss_kib"]
                ) / n
                point["agent_pss_kib_per_session"] = mem["agents_pss_kib"] / max(
                    1, mem["agents"]
                )
                point["ratio"] = point["events_per_s"] / out["copy_baseline_per_s"]
                out["points"].append(point)
        finally:
            await cleanup(ctx)
    return out


# --- replay against events replayed -------------------------------------------------------


async def pg_read(db_url: str, sid: uuid.UUID, after: int) -> dict[str, float]:
    """The baseline of a replay: the same rows read straight from Postgres with the
    gateway's statement, in pages of 1,000, on one connection (no HTTP, no SSE)."""
    conn = await asyncpg.connect(db_url)
    try:
        t0 = time.perf_counter()
        n, size = 0, 0
        while True:
            rows = await conn.fetch(
                "SELECT event_id, payload FROM session_events"
                " WHERE session_id = $1 AND event_id > $2 ORDER BY event_id LIMIT 1000",
                sid,
                after,
            )
            if not rows:
                break
            n += len(rows)
            size += sum(len(r["payload"]) for r in rows)
            after = rows[-1]["event_id"]
        return {"seconds": time.perf_counter() - t0, "rows": n, "bytes": size}
    finally:
        await conn.close()


async def replay_curve(events: int, long: int) -> dict[str, Any]:
    """A log of `events` events whose longest session has `long`: replay from k events
    behind its head, for k = 100, 1,000, ... up to the whole session."""
    sessions = max(10, events // 100)
    out: dict[str, Any] = {"events": events, "sessions": sessions, "points": []}
    async with suite.Database() as db:
        suite.progress(
            f"replay curve: loading {sessions:,} sessions, {events:,} events"
        )
        loaded = await load(db.url, sessions, events, long_events=long, triggers=False)
        out["long"] = loaded.long_events
        ctx = new_ctx(db.url)
        try:
            _, gport = await start_services(ctx)
            head = loaded.long_events
            for depth in sorted(
                {d for d in (100, 1_000, 10_000, 100_000, head) if d <= head}
            ):
                sse = await sse_replay(gport, loaded.long_id, head - depth)
                pg = await pg_read(db.url, loaded.long_id, head - depth)
                out["points"].append(
                    {
                        "replayed": depth,
                        "seconds": sse["seconds"],
                        "first_byte_ms": sse["first_byte_ms"],
                        "bytes": sse["bytes"],
                        "pg_seconds": pg["seconds"],
                        "pg_bytes": pg["bytes"],
                    }
                )
        finally:
            await cleanup(ctx)
    return out


# --- output --------------------------------------------------------------------------------


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
        out.append(
            "\n| log events | events replayed | seconds | events/s | MB | Postgres alone s |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|")
        out.extend(
            f"| {log['events']:,} | {r['replayed']:,} | {r['seconds']:.3f} "
            f"| {r['replayed'] / r['seconds']:,.0f} | {r['bytes'] / 1e6:.1f} "
            f"| {r['pg_seconds']:.3f} |"
            for log in result["replay"]
            for r in log["points"]
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
    if "streams" in result:
        st = result["streams"]
        out.append(
            f"\n| sessions streaming | events/s stored+published | vs COPY x50 "
            f"({st['copy_baseline_per_s']:,.0f}/s) | gateway KiB / live session "
            f"| agent PSS MiB |"
        )
        out.append("|---:|---:|---:|---:|---:|")
        out.extend(
            f"| {p['sessions']:,} | {p['events_per_s']:,.0f} | {p['ratio']:.0%} "
            f"| {p['gateway_kib_per_session']:,.0f} | {p['agent_pss_kib_per_session'] / 1024:.1f} |"
            for p in st["points"]
        )
    if "search" in result:
        out.append(
            "\n"
            + suite.table(
                suite.Ctx("", "", "", Path(), rows=search_rows(result["search"]))
            )
        )
    return "\n".join(out).strip("\n")


def plot_or_say(json_path: Path) -> None:
    """Draw the PNGs beside the JSON when matplotlib is there, else say how."""
    try:
        from tests.bench import plots
    except ImportError:
        suite.progress(
            "matplotlib is not installed, so no plots: pip install -e .[bench], then "
            f"python -m tests.bench.plots {json_path}"
        )
        return
    for path in plots.plot_all(json.loads(json_path.read_text()), json_path.parent):
        suite.progress(f"plot: {path}")


async def run(parts: set[str], json_path: Path | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": suite.machine(), "duration": suite.DURATION}
    t0 = time.monotonic()

    def save() -> None:  # after each part: a failure later keeps what was measured
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=2) + "\n")

    if "list" in parts:
        result["list"] = await list_curve(sizes("BENCH_CURVE_SESSIONS", "10k,100k,1M"))
        save()
    if "replay" in parts:
        long = parse_size(os.environ.get("BENCH_LONG", "100k"))
        result["replay"] = []
        for events in sizes("BENCH_EVENTS", "1M"):
            result["replay"].append(await replay_curve(events, long))
            save()
    if "fanout" in parts:
        rate = int(os.environ.get("BENCH_FANOUT_RATE", "50"))
        result["fanout"] = await fanout_curve(
            sizes("BENCH_CURVE_SUBSCRIBERS", "100,1000,5000"), rate
        )
        save()
    if "streams" in parts:
        result["streams"] = await streams_curve(
            sizes("BENCH_CURVE_STREAMS", "1,10,100,1000"),
            parse_size(os.environ.get("BENCH_STREAM_EVENTS", "50k")),
        )
        save()
    if "search" in parts:
        result["search"] = await fanout_search(
            parse_size(os.environ.get("BENCH_SEARCH_SUBSCRIBERS", "1000")),
            float(os.environ.get("BENCH_SEARCH_START", "10")),
            int(os.environ.get("BENCH_SEARCH_STEPS", "4")),
        )
    result["seconds"] = time.monotonic() - t0
    save()
    return result


def main(argv: list[str]) -> None:
    import uvloop

    json_path: Path | None = DEFAULT_JSON
    parts, draw = set(PARTS), True
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--json":
            json_path = Path(args.pop(0))
        elif a == "--only":
            parts = set(args.pop(0).split(","))
            unknown = parts - set(PARTS)
            if unknown:
                raise SystemExit(f"unknown parts {sorted(unknown)}; known: {PARTS}")
        elif a == "--no-plots":
            draw = False
        else:
            raise SystemExit(f"unknown argument {a!r}")
    os.sched_setaffinity(0, {int(suite.CLIENT_CORE)})
    result = uvloop.run(run(parts, json_path))
    print(
        f"\nRouta scaling curves — {result['machine']}, BENCH_DURATION={suite.DURATION:g}s\n"
    )
    print(tables(result))
    if json_path is not None:
        suite.progress(f"figures: {json_path}")
        if draw:
            plot_or_say(json_path)
