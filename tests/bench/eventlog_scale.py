# ruff: noqa: T201
"""The event log at scale: load N sessions and M events (eventlog_gen), then measure the
reads and writes that grow with the log, each next to a baseline taken in the same run.

    python -m tests.bench.eventlog_scale --events 100M --sessions 1M   # the big run
    python -m tests.bench.eventlog_scale --events 1M --sessions 10k    # what CI runs
    python -m tests.bench.eventlog_scale --list-curve 10k,100k,1M      # warm list vs size

Measured: GET /api/sessions?workspaceId&limit=50 cold (first request per workspace on a
fresh query service) and warm (wrk, beside bare bytes from memory); /history paging of the
long session from its start and at its tail; SSE replay from a Last-Event-ID k events
behind the head (the replay-time curve); bytes on disk per event; append_batch events/s
at that size beside the same writers on an empty log. Figures only: nothing is asserted
on time. JSON of every figure goes to --json (default: printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from services.query.retention import run_pass
from shared import events
from shared.channels import Channels
from shared.db.connect import create_pool
from shared.redisconn import create_redis
from tests.bench import suite
from tests.bench.eventlog_gen import Loaded, load
from tests.bench.suite import Database

APPEND_WRITERS = 8
APPEND_BATCH = 10  # events per append_batch call: a flush of a streaming turn


def parse_size(text: str) -> int:
    """10k / 1M / 100M / 2500 -> int."""
    text = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


# --- writes ----------------------------------------------------------------------------


def _chunk(i: int) -> dict[str, Any]:
    return {
        "update": {
            "sessionUpdate": "agent_message_chunk",
            "messageId": "bench",
            "content": {
                "type": "text",
                "text": f"streamed words of a reply, part {i} ",
            },
        }
    }


async def append_rate(db_url: str, sessions: list[uuid.UUID], seconds: float) -> float:
    """events/s of append_batch (the gateway's store) from APPEND_WRITERS connections,
    each streaming into its own session in batches of APPEND_BATCH."""
    stop_at = time.monotonic() + seconds
    stored = [0]
    batch = [_chunk(i) for i in range(APPEND_BATCH)]

    kinds, rests = events.encode_batch(batch)

    async def writer(sid: uuid.UUID) -> None:
        conn = await asyncpg.connect(db_url)
        try:
            while time.monotonic() < stop_at:
                await events.store(conn, sid, kinds, rests)
                stored[0] += APPEND_BATCH
        finally:
            await conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*(writer(s) for s in sessions[:APPEND_WRITERS]))
    return stored[0] / (time.monotonic() - t0)


async def empty_log_sessions(db_url: str) -> list[uuid.UUID]:
    """APPEND_WRITERS sessions in an otherwise empty database: the append baseline."""
    ids = [uuid.uuid4() for _ in range(APPEND_WRITERS)]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO workspaces (id, title) VALUES ('scale-base', 'base') ON CONFLICT DO NOTHING"
        )
        await conn.executemany(
            "INSERT INTO sessions (session_id, workspace_id, cwd, provider) "
            "VALUES ($1, 'scale-base', '/work', 'echo')",
            [(i,) for i in ids],
        )
    finally:
        await conn.close()
    return ids


async def disk(db_url: str, events: int) -> dict[str, float]:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("CHECKPOINT")
        row = await conn.fetchrow(
            "SELECT pg_total_relation_size('session_events') AS total,"
            " pg_relation_size('session_events') AS heap,"
            " pg_indexes_size('session_events') AS idx,"
            " pg_total_relation_size('session_events') - pg_relation_size('session_events')"
            "   - pg_indexes_size('session_events') AS toast,"
            " pg_total_relation_size('search_documents') AS search,"
            " (SELECT count(*) FROM search_documents) AS search_rows,"
            " pg_database_size(current_database()) AS db,"
            " (SELECT avg(octet_length(payload)) FROM"
            "   (SELECT payload FROM session_events TABLESAMPLE SYSTEM (0.1)) s) AS payload"
        )
    finally:
        await conn.close()
    assert row is not None
    n = max(1, events)
    return {
        "bytes_per_event": row["total"] / n,
        "heap_per_event": row["heap"] / n,
        "index_per_event": row["idx"] / n,
        "toast_per_event": row["toast"] / n,
        "payload_avg": float(row["payload"] or 0),
        "search_documents_bytes": float(row["search"]),
        "search_documents_rows": float(row["search_rows"]),
        "session_events_bytes": float(row["total"]),
        "database_bytes": float(row["db"]),
    }


async def consistency(db_url: str, loaded: Loaded) -> dict[str, Any]:
    """What the load must have produced, on the sampled sessions and the long one: each
    session's rows are 1..last_event_id, and a payload is the layout append_batch stores."""
    conn = await asyncpg.connect(db_url)
    try:
        sample = [*loaded.sample, (loaded.long_id, loaded.long_events)]
        wrong = 0
        for sid, n in sample:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(max(event_id), 0) AS hi,"
                " (SELECT last_event_id FROM sessions WHERE session_id = $1) AS last"
                " FROM session_events WHERE session_id = $1",
                sid,
            )
            assert row is not None
            if not row["n"] == row["hi"] == row["last"] == n:
                wrong += 1
        payload = await conn.fetchval(
            "SELECT payload FROM session_events WHERE session_id = $1 AND event_id = 1",
            loaded.long_id,
        )
    finally:
        await conn.close()
    first = orjson.loads(payload) if payload else {}
    return {
        "sessions_checked": len(sample),
        "sessions_wrong": wrong,
        "first_payload_ok": first.get("sessionId") == str(loaded.long_id)
        and first.get("eventId") == "1"
        and isinstance(first.get("update"), dict),
    }


# at most about this many sessions expire for the retention pass: a rate needs no more, and
# a tenth of 1M sessions (10M events) would take the pass a quarter of an hour
RETENTION_SESSIONS = 10_000


async def retention_rate(db_url: str, loaded: Loaded) -> dict[str, float]:
    """EVENT_RETENTION_DAYS at this size: a tenth of the sessions (at most about
    RETENTION_SESSIONS) closed 40 days ago (not the long one nor the probes), one pass
    with the default batch."""
    keep = [loaded.long_id, *(sid for sid, _ in loaded.sample)]
    every = max(10, loaded.sessions // RETENTION_SESSIONS)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "UPDATE sessions SET last_activity = now() - interval '40 days',"
            " updated_at = now() - interval '40 days'"
            " WHERE session_id <> ALL($1::uuid[])"
            " AND abs(hashtext(session_id::text)) % $2 = 0",
            keep,
            every,
        )
    finally:
        await conn.close()
    pool = await create_pool(db_url, min_size=1, max_size=2)
    try:
        t0 = time.monotonic()
        result = await run_pass(pool, 30)
        seconds = time.monotonic() - t0
    finally:
        await pool.close()
    return {
        "sessions": result.sessions,
        "events": result.events,
        "seconds": seconds,
        "events_per_s": result.events / seconds if seconds else 0.0,
        "statements": result.statements,
        "largest_delete": result.largest_delete,
        "longest_statement_ms": result.longest_statement * 1000,
    }


# --- reads -----------------------------------------------------------------------------


async def timed_get(s: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with s.get(url) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {body[:200]!r}")
    return (time.perf_counter() - t0) * 1000, len(body)


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": suite.pct(ms, 99),
        "max_ms": max(ms),
    }


async def list_cold(port: int, workspaces: list[str]) -> dict[str, float]:
    """First request per workspace on a fresh service: a miss of the L1 and Redis caches."""
    ms = []
    async with aiohttp.ClientSession() as s:
        for w in workspaces:
            t, _ = await timed_get(
                s, f"http://127.0.0.1:{port}/api/sessions?workspaceId={w}&limit=50"
            )
            ms.append(t)
    return summary(ms)


async def list_warm(ctx: suite.Ctx, port: int, workspaces: list[str]) -> dict[str, Any]:
    """wrk over every workspace (warmed), beside bare bytes of the same body from memory."""
    async with aiohttp.ClientSession() as s:
        for w in workspaces:
            await timed_get(
                s, f"http://127.0.0.1:{port}/api/sessions?workspaceId={w}&limit=50"
            )
        async with s.get(
            f"http://127.0.0.1:{port}/api/sessions?workspaceId={workspaces[0]}&limit=50"
        ) as r:
            body = await r.read()
    body_path = ctx.tmp / f"body-{uuid.uuid4().hex[:6]}.json"
    body_path.write_bytes(body)
    bare_port = suite.free_port()
    bare = await suite.start(
        ctx,
        ["-m", "tests.bench.bare", str(bare_port), str(body_path)],
        bare_port,
        "/bytes",
    )
    try:
        if shutil.which("wrk"):
            base = suite.wrk(f"http://127.0.0.1:{bare_port}/bytes")
            prod = suite.wrk(
                f"http://127.0.0.1:{port}", workspaces, "/api/sessions?workspaceId="
            )
        else:  # CI has no wrk: one closed-loop Python client on both sides
            base = await client_load(f"http://127.0.0.1:{bare_port}/bytes", [""])
            prod = await client_load(
                f"http://127.0.0.1:{port}/api/sessions?limit=50&workspaceId=",
                workspaces,
            )
    finally:
        suite.stop(ctx, bare)
    return {
        "bare_rps": base["rps"],
        "bare_p99_ms": base["p99"],
        "rps": prod["rps"],
        "p50_ms": prod["p50"],
        "p99_ms": prod["p99"],
        "ratio": prod["rps"] / base["rps"],
        "body_bytes": len(body),
        "load": "wrk -t1 -c64" if shutil.which("wrk") else "one sequential client",
    }


async def client_load(prefix: str, suffixes: list[str]) -> dict[str, float]:
    """Sequential GETs for CLIENT_SECONDS: req/s and latency without wrk."""
    ms: list[float] = []
    stop_at = time.monotonic() + min(3.0, suite.DURATION)
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < stop_at:
            t, _ = await timed_get(s, prefix + suffixes[len(ms) % len(suffixes)])
            ms.append(t)
    return {
        "rps": len(ms) / (time.monotonic() - t0),
        "p50": statistics.median(ms),
        "p99": suite.pct(ms, 99),
    }


async def history_paging(port: int, sid: uuid.UUID, head: int) -> dict[str, Any]:
    """Pages of 1000 (the maximum): the first 10 and the last 10, and the whole log once."""
    url = f"http://127.0.0.1:{port}/api/sessions/{sid}/history?limit=1000&after="
    async with aiohttp.ClientSession() as s:
        start = [(await timed_get(s, url + str(a)))[0] for a in range(0, 10_000, 1000)]
        tail_afters = [max(0, head - 1000 * k) for k in range(10, 0, -1)]
        tail = [(await timed_get(s, url + str(a)))[0] for a in tail_afters]
        t0 = time.perf_counter()
        after, total_bytes = 0, 0
        while after < head:
            _, n = await timed_get(s, url + str(after))
            total_bytes += n
            after += 1000
        whole = time.perf_counter() - t0
    return {
        "start": summary(start),
        "tail": summary(tail),
        "whole_seconds": whole,
        "whole_events_per_s": head / whole,
        "whole_bytes": total_bytes,
    }


async def sse_replay(gw: int, sid: uuid.UUID, last_event_id: int) -> dict[str, float]:
    """Time from the request to the `connected` frame after replaying every later event."""
    url = f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}"
    t0 = time.perf_counter()
    first = None
    received = 0
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Last-Event-ID": str(last_event_id)}) as r,
    ):
        if r.status != 200:
            raise RuntimeError(f"replay {r.status}: {await r.text()}")
        async for chunk in r.content.iter_any():
            if first is None:
                first = time.perf_counter()
            received += len(chunk)
            if b"Connected to ACP session." in chunk:
                break
    done = time.perf_counter()
    return {
        "seconds": done - t0,
        "first_byte_ms": ((first or done) - t0) * 1000,
        "bytes": received,
    }


# --- one run -------------------------------------------------------------------------------


async def start_services(ctx: suite.Ctx) -> tuple[int, int]:
    qport, gport = suite.free_port(), suite.free_port()
    await suite.start(ctx, ["-m", "services.query"], qport, "/healthz")
    await suite.start(ctx, ["-m", "services.gateway"], gport, "/healthz")
    return qport, gport


def new_ctx(db_url: str) -> suite.Ctx:
    run_id = uuid.uuid4().hex[:8]
    return suite.Ctx(
        db_url,
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        f"scale-{run_id}",
        Path(tempfile.mkdtemp(prefix="routa-scale-")),
    )


async def cleanup(ctx: suite.Ctx) -> None:
    for p in list(ctx.procs):
        suite.stop(ctx, p)
    with contextlib.suppress(Exception):
        r = create_redis(ctx.redis_url)
        keys = await suite.prefixed_keys(r, f"{Channels(ctx.prefix).base}:*")
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def eventlog_run(
    events: int,
    sessions: int,
    *,
    long_events: int = 100_000,
    triggers: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    """Load, then every measurement of the event log at this size."""
    out: dict[str, Any] = {"events": events, "sessions": sessions, "triggers": triggers}
    append_seconds = min(5.0, suite.DURATION)
    async with Database(keep) as db:
        suite.progress(f"{db.name}: append baseline on an empty log")
        base_ids = await empty_log_sessions(db.url)
        out["append_empty_per_s"] = await append_rate(db.url, base_ids, append_seconds)
        suite.progress(f"loading {sessions:,} sessions and {events:,} events by COPY")
        loaded = await load(
            db.url, sessions, events, long_events=long_events, triggers=triggers
        )
        out["load"] = {
            "sessions_seconds": loaded.seconds_sessions,
            "events_seconds": loaded.seconds_events,
            "events_per_s": loaded.events_per_second,
        }
        suite.progress(
            f"loaded in {loaded.seconds_sessions + loaded.seconds_events:.0f}s "
            f"({loaded.events_per_second:,.0f} events/s); measuring"
        )
        out["check"] = await consistency(db.url, loaded)
        out["disk"] = await disk(db.url, events)
        out.update(await measure_loaded(db.url, loaded))
        suite.progress("append rate at this size")
        out["append_at_size_per_s"] = await append_rate(
            db.url, [sid for sid, _ in loaded.sample], append_seconds
        )
        out["append_ratio"] = out["append_at_size_per_s"] / out["append_empty_per_s"]
        suite.progress(
            "retention pass over a tenth of the sessions (at most about 10,000)"
        )
        out["retention"] = await retention_rate(db.url, loaded)
    return out


async def measure_loaded(db_url: str, loaded: Loaded) -> dict[str, Any]:
    ctx = new_ctx(db_url)
    out: dict[str, Any] = {}
    try:
        qport, gport = await start_services(ctx)
        out["list_cold"] = await list_cold(qport, loaded.workspaces)
        out["list_warm"] = await list_warm(ctx, qport, loaded.workspaces)
        if loaded.long_events:
            head = loaded.long_events
            out["history"] = await history_paging(qport, loaded.long_id, head)
            depths = sorted(
                {d for d in (100, 1_000, 10_000, 100_000, head) if d <= head}
            )
            out["replay"] = {
                str(d): await sse_replay(gport, loaded.long_id, head - d)
                for d in depths
            }
    finally:
        await cleanup(ctx)
        with contextlib.suppress(OSError):
            for f in ctx.tmp.iterdir():
                f.unlink()
            ctx.tmp.rmdir()
    return out


async def list_curve(sizes: list[int]) -> list[dict[str, Any]]:
    """Warm and cold list at each number of sessions (no events), each beside bare bytes."""
    rows = []
    for n in sizes:
        async with Database() as db:
            suite.progress(f"list curve: {n:,} sessions")
            loaded = await load(db.url, n, 0, long_events=0, triggers=False)
            ctx = new_ctx(db.url)
            try:
                qport, _ = await start_services(ctx)
                cold = await list_cold(qport, loaded.workspaces)
                warm = await list_warm(ctx, qport, loaded.workspaces)
            finally:
                await cleanup(ctx)
            rows.append({"sessions": n, "list_cold": cold, "list_warm": warm})
    return rows


# --- output --------------------------------------------------------------------------------


def rows_of(result: dict[str, Any]) -> list[suite.Row]:
    """The suite's table rows for one eventlog_run."""
    ev = result["events"]
    tag = f"6 log@{ev / 1e6:g}M"
    rows = []
    w, c = result["list_warm"], result["list_cold"]
    rows.append(
        suite.Row(
            f"{tag} warm list req/s (bare bytes)",
            f"{w['bare_rps']:,.0f}",
            f"{w['rps']:,.0f}",
            f"{w['ratio']:.0%}",
            ">= 60%",
            suite.yes(w["ratio"] >= 0.6),
        )
    )
    rows.append(
        suite.Row(
            f"{tag} warm list p99 ms",
            f"{w['bare_p99_ms']:.2f}",
            f"{w['p99_ms']:.2f}",
            "",
            "<= 5",
            suite.yes(w["p99_ms"] <= 5),
        )
    )
    rows.append(
        suite.Row(
            f"{tag} cold list p50 / p99 ms",
            "",
            f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f}",
            "",
            "",
            "",
        )
    )
    if "history" in result:
        h = result["history"]
        rows.append(
            suite.Row(
                f"{tag} history page (1000) start / tail p50 ms",
                "",
                f"{h['start']['p50_ms']:.1f} / {h['tail']['p50_ms']:.1f}",
                f"{h['tail']['p50_ms'] / h['start']['p50_ms']:.2f}x",
                "",
                "",
            )
        )
        deep = result["replay"][max(result["replay"], key=int)]
        rows.append(
            suite.Row(
                f"{tag} SSE replay of {int(max(result['replay'], key=int)):,} events s",
                "",
                f"{deep['seconds']:.2f}",
                "",
                "",
                "",
            )
        )
    d = result["disk"]
    rows.append(
        suite.Row(
            f"{tag} bytes/event (heap+index+toast; payload)",
            f"{d['payload_avg']:.0f}",
            f"{d['bytes_per_event']:.0f}",
            f"{d['bytes_per_event'] / max(1.0, d['payload_avg']):.2f}x",
            "",
            "",
        )
    )
    if "retention" in result:
        r = result["retention"]
        rows.append(
            suite.Row(
                f"{tag} retention events deleted/s (longest statement ms)",
                "",
                f"{r['events_per_s']:,.0f} ({r['longest_statement_ms']:.0f})",
                "",
                "",
                "",
            )
        )
    rows.append(
        suite.Row(
            f"{tag} append events/s (empty log)",
            f"{result['append_empty_per_s']:,.0f}",
            f"{result['append_at_size_per_s']:,.0f}",
            f"{result['append_ratio']:.0%}",
            ">= 80%",
            suite.yes(result["append_ratio"] >= 0.8),
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="1M", help="events to load (10M, 100M, ...)")
    ap.add_argument("--sessions", default=None, help="sessions (default events/100)")
    ap.add_argument("--long", default="100k", help="events of the one long session")
    ap.add_argument(
        "--triggers", action="store_true", help="keep triggers on while loading"
    )
    ap.add_argument(
        "--list-curve", default=None, help="e.g. 10k,100k,1M: warm list only"
    )
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(suite.CLIENT_CORE)})
    import uvloop

    result: Any
    if args.list_curve:
        sizes = [parse_size(s) for s in args.list_curve.split(",")]
        result = uvloop.run(list_curve(sizes))
    else:
        events = parse_size(args.events)
        sessions = (
            parse_size(args.sessions) if args.sessions else max(10, events // 100)
        )
        result = uvloop.run(
            eventlog_run(
                events,
                sessions,
                long_events=parse_size(args.long),
                triggers=args.triggers,
                keep=args.keep,
            )
        )
        print(suite.table(suite.Ctx("", "", "", Path(), rows=rows_of(result))))
    result = {"machine": suite.machine(), "result": result}
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
