"""Search and export benchmark: `python -m tests.bench.search_bench` (one run, own database).

1. Search over SEARCH_DOCS stored messages (100 workspaces; generated in SQL, indexed by the
   same generated column and GIN index): p50/p99 of `shared.db.search.search` for four query
   shapes, against the same searches with the indexes switched off (3 runs each: slow).
2. Event writes into that database, each batch followed by a search index pass, against the
   same writes without passes, alternated in one run: agent messages of CHUNKS chunks stored
   through `append_batch` (the gateway's writer) in batches of BATCH, each closed by
   `turn_complete` (so every pass ends a message, as the gateway's pass at a message's end).
3. Export memory: tracemalloc's peak while a 10k- and a 100k-event session are exported as
   markdown and jsonl through the real query app, the body read and dropped as it streams.

Env: TEST_DATABASE_URL (server), SEARCH_DOCS (default 1,000,000), WRITE_EVENTS (default 100,000).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from services.query.app import create_app
from shared.db import search as search_db
from shared.db import sessions as sessions_db
from shared.db.connect import Pool, create_pool
from shared.db.migrate import migrate
from shared.events import encode_batch, record, store
from shared.settings import Settings

CHUNKS = 50
BATCH = 50
WORDS = [f"w{i}" for i in range(5000)]  # a vocabulary; w0..w9 common, the rest rarer


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def new_session(pool: Pool, workspace_id: str) -> uuid.UUID:
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions_db.insert(
            conn,
            sessions_db.NewSession(
                session_id=sid, workspace_id=workspace_id, cwd="/tmp", provider="echo"
            ),
        )
    return sid


def message(i: int) -> list[dict[str, Any]]:
    updates: list[dict[str, Any]] = [
        {
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "messageId": f"m{i}",
                "content": {"type": "text", "text": f"{WORDS[(i * 7 + k) % 5000]} "},
            }
        }
        for k in range(CHUNKS - 1)
    ]
    updates.append({"update": {"sessionUpdate": "turn_complete", "stopReason": "x"}})
    return updates


async def write_run(pool: Pool, events: int, with_index: bool) -> float:
    """Events per second stored by append_batch (then indexed), one session, batches of
    BATCH."""
    sid = await new_session(pool, "default")
    stream = [u for i in range(events // CHUNKS) for u in message(i)]
    start = time.perf_counter()
    async with pool.acquire() as conn:
        for at in range(0, len(stream), BATCH):
            await store(conn, sid, *encode_batch(stream[at : at + BATCH]))
            if with_index:
                await search_db.index_session(conn, sid)
    return len(stream) / (time.perf_counter() - start)


async def writes(pool: Pool, events: int) -> dict[str, float]:
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):
        for with_index in (False, True):
            runs[with_index].append(await write_run(pool, events // 3, with_index))
    return {
        "without": statistics.median(runs[False]),
        "with": statistics.median(runs[True]),
    }


async def seed_documents(pool: Pool, count: int) -> None:
    """`count` closed agent messages of ~40 words in 100 workspaces, 1,000 per session."""
    await pool.execute(
        "INSERT INTO workspaces (id, title) SELECT 'bw' || i, 'bw' || i "
        "FROM generate_series(0, 99) i ON CONFLICT DO NOTHING"
    )
    sessions = max(100, count // 1000)
    await pool.execute(
        """INSERT INTO sessions (session_id, workspace_id, cwd, provider)
           SELECT gen_random_uuid(), 'bw' || (i % 100), '/tmp', 'echo'
           FROM generate_series(0, $1 - 1) i""",
        sessions,
        timeout=3600,
    )
    # words: Zipf-like, w0..w9 in most messages, w4999 in few
    await pool.execute(
        """INSERT INTO search_documents
               (session_id, first_event_id, event_id, workspace_id, kind, at, body)
           SELECT s.session_id, n, n, s.workspace_id, 'agent_message', now(),
                  (SELECT string_agg('w' || floor(power(random(), 3) * 5000)::int, ' ')
                   FROM generate_series(1, 40) WHERE n > 0)
           FROM sessions s, generate_series(1, $1) n
           WHERE s.workspace_id LIKE 'bw%'""",
        count // sessions,
        timeout=3600,
    )
    await pool.execute("ANALYZE search_documents", timeout=3600)


async def queries(pool: Pool, url: str) -> list[tuple[str, float, float, float, float]]:
    shapes = {
        "common word": "w1",
        "two words": "w3 w40",
        "rare word": "w4000",
        "phrase": '"w1 w2"',
    }
    # baseline: the same searches on a connection with index scans switched off and no
    # statement cache (a cached plan would keep using the index)
    scan_conn = await asyncpg.connect(url, statement_cache_size=0)
    await scan_conn.execute(
        "SET enable_bitmapscan = off; SET enable_indexscan = off; "
        "SET statement_timeout = 0"
    )
    out = []
    try:
        async with pool.acquire() as conn:
            for label, q in shapes.items():
                times = []
                for i in range(200):
                    start = time.perf_counter()
                    await search_db.search(conn, f"bw{i % 100}", q, 20)
                    times.append((time.perf_counter() - start) * 1000)
                scan = []
                for i in range(3):
                    start = time.perf_counter()
                    await search_db.search(scan_conn, f"bw{i}", q, 20)
                    scan.append((time.perf_counter() - start) * 1000)
                out.append(
                    (label, pct(times, 50), pct(times, 99), pct(scan, 50), max(scan))
                )
    finally:
        await scan_conn.close()
    return out


async def export_peak(settings: Settings, pool: Pool, events: int) -> dict[str, float]:
    sid = await new_session(pool, "default")
    stream = [u for i in range(events // CHUNKS) for u in message(i)]
    async with pool.acquire() as conn:
        for at in range(0, len(stream), 1000):
            await record(conn, sid, stream[at : at + 1000])
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    peaks: dict[str, float] = {}
    try:
        for fmt in ("markdown", "jsonl"):
            tracemalloc.start()
            resp = await client.get(f"/api/sessions/{sid}/export?format={fmt}")
            size = 0
            async for block in resp.content.iter_chunked(64 * 1024):
                size += len(block)
            peaks[fmt] = tracemalloc.get_traced_memory()[1] / 1024 / 1024
            tracemalloc.stop()
            peaks[f"{fmt} MiB out"] = size / 1024 / 1024
    finally:
        await client.close()
    return peaks


async def main() -> None:
    server = os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"routa_search_bench_{uuid.uuid4().hex[:6]}"
    url = str(URL(server).with_path(f"/{name}"))
    docs = int(os.environ.get("SEARCH_DOCS", "1000000"))
    events = int(os.environ.get("WRITE_EVENTS", "100000"))
    await migrate(url)
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        start = time.perf_counter()
        await seed_documents(pool, docs)
        total = await pool.fetchval("SELECT count(*) FROM search_documents")
        say(f"seeded {total:,} documents in {time.perf_counter() - start:.0f} s")
        for label, p50, p99, scan50, scan_max in await queries(pool, url):
            say(
                f"search {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"(no index: p50 {scan50:.0f} ms, max {scan_max:.0f} ms)"
            )
        w = await writes(pool, events)
        say(
            f"writes (append_batch, {BATCH}/batch, {events:,} events each way): "
            f"without index {w['without']:,.0f}/s, with {w['with']:,.0f}/s "
            f"({w['with'] / w['without']:.0%})"
        )
        settings = Settings(database_url=url, redis_prefix=f"bench-{name}")
        for n in (10_000, 100_000):
            peaks = await export_peak(settings, pool, n)
            say(f"export {n:,} events: peak traced MiB {peaks}")
    finally:
        await pool.close()
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
