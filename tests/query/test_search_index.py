"""Search index passes (shared.db.search.index_session), real Postgres.

Events are indexed after their append, not in it: a pass indexes one session's events after
its watermark, under the watermark's row lock. Stored-but-unindexed events (a writer that
died before its pass) are covered by the session's next pass; concurrent passes index each
event once; the migration that moved indexing out of the append keeps what the trigger built.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from typing import Any

from shared.db import migrate as migrate_mod
from shared.db import search as search_db
from shared.db.connect import create_pool
from shared.db.migrate import migrate
from shared.events import encode_batch, gateway_update, store
from tests.query.sessions_support import (
    add_events,
    chunk,
    make_session,
    searchable_texts,
)

WAIT = 30.0  # hang guard only
DONE = {"sessionUpdate": "turn_complete", "stopReason": "end_turn"}
DOCS = """SELECT first_event_id, event_id, kind, message_id, body FROM search_documents
          WHERE session_id = $1 ORDER BY first_event_id"""


def user(text: str) -> dict[str, Any]:
    return {"sessionUpdate": "user_message", "content": {"type": "text", "text": text}}


async def store_only(pool, sid: str, updates: list[dict[str, Any]]) -> list[int]:
    """Store as a writer does and then die: no index pass."""
    async with pool.acquire() as conn:
        stored = await store(
            conn, uuid.UUID(sid), *encode_batch([{"update": u} for u in updates])
        )
    return [e.event_id for e in stored]


async def docs(pool, sid: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pool.fetch(DOCS, uuid.UUID(sid))]


async def watermark(pool, sid: str) -> int | None:
    return await pool.fetchval(
        "SELECT indexed_upto FROM search_watermarks WHERE session_id = $1",
        uuid.UUID(sid),
    )


async def test_events_stored_without_a_pass_are_indexed_by_the_next_one(
    pool, workspace_id
) -> None:
    """A writer that stored and died before its pass: the next pass (here another
    writer's record of a lifecycle event) indexes what it left, open message closed."""
    sid = await make_session(pool, workspace_id)
    ids = await store_only(
        pool, sid, [user("wombat burrow"), chunk("dingo ", "m"), chunk("den", "m")]
    )
    assert await docs(pool, sid) == []
    await add_events(pool, sid, [gateway_update("session_renamed", name="x")["update"]])
    assert await docs(pool, sid) == [
        (ids[0], ids[0], "user_message", None, "wombat burrow"),
        (ids[1], ids[2], "agent_message", "m", "dingo den"),
    ]
    assert await watermark(pool, sid) == ids[2] + 1
    # a pass with nothing new changes nothing and says no message is open
    assert await search_db.index_session(pool, uuid.UUID(sid)) is False
    assert len(await docs(pool, sid)) == 2


async def test_a_pass_leaves_the_last_message_open_for_the_next(
    pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    await store_only(pool, sid, [user("p"), chunk("echidna ", "m")])
    assert await search_db.index_session(pool, uuid.UUID(sid)) is True
    assert (await docs(pool, sid))[1][4] is None  # open: no body yet
    await store_only(pool, sid, [chunk("spines", "m")])
    assert await search_db.index_session(pool, uuid.UUID(sid)) is True
    await store_only(pool, sid, [DONE])
    assert await search_db.index_session(pool, uuid.UUID(sid)) is False
    assert [d[4] for d in await docs(pool, sid)] == ["p", "echidna spines"]


async def test_a_pass_of_a_deleted_or_unknown_session_does_nothing(pool) -> None:
    assert await search_db.index_session(pool, uuid.uuid4()) is False


async def test_two_concurrent_passes_index_once(
    pool, database_url, workspace_id
) -> None:
    """The second pass waits for the first's lock, then finds nothing left to index."""
    sid = await make_session(pool, workspace_id)
    ids = await store_only(
        pool, sid, [user("platypus bill"), chunk("duck "), chunk("bill"), DONE]
    )
    first = await pool.acquire()
    second = await pool.acquire()
    try:
        tx = first.transaction()
        await tx.start()
        await search_db.index_session(first, uuid.UUID(sid))
        waiting = asyncio.create_task(search_db.index_session(second, uuid.UUID(sid)))
        pid = second.get_server_pid()
        async with asyncio.timeout(WAIT):
            while (
                await pool.fetchval(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
                )
                != "Lock"
            ):
                assert not waiting.done()
                await asyncio.sleep(0.02)
        await tx.commit()
        async with asyncio.timeout(WAIT):
            assert await waiting is False
    finally:
        await pool.release(first)
        await pool.release(second)
    assert await docs(pool, sid) == [
        (ids[0], ids[0], "user_message", None, "platypus bill"),
        (ids[1], ids[2], "agent_message", None, "duck bill"),
    ]
    # and many at once, on a session whose watermark row does not exist yet
    other = await make_session(pool, workspace_id)
    await store_only(pool, other, [user("bilby"), chunk("bilby ears"), DONE])
    more = await create_pool(database_url, min_size=1, max_size=6)
    try:
        await asyncio.gather(
            *(search_db.index_session(more, uuid.UUID(other)) for _ in range(6))
        )
    finally:
        await more.close()
    assert [d[4] for d in await docs(pool, other)] == ["bilby", "bilby ears"]


async def test_passes_at_any_points_give_the_documents_consolidation_gives(
    pool, workspace_id
) -> None:
    """Stores and passes interleaved at random: every session ends with the same
    documents, whichever events each pass happened to see."""
    events = [
        user("first prompt"),
        chunk("a1 ", "a"),
        chunk("a2 ", "a"),
        chunk("b1 ", "b"),
        chunk("b2", "b"),
        {"sessionUpdate": "tool_call", "toolCallId": "t", "title": "read"},
        chunk("c1 "),
        chunk("c2"),
        user("second prompt"),
        chunk("d1 ", "d"),
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "image"}},
        chunk("e1 ", "d"),
        chunk("e2", "d"),
        DONE,
    ]
    expected = searchable_texts(events)
    rng = random.Random(10)
    for _ in range(12):
        sid = await make_session(pool, workspace_id)
        cuts = sorted(rng.sample(range(1, len(events)), rng.randint(1, 8)))
        for lo, hi in itertools.pairwise([0, *cuts, len(events)]):
            await store_only(pool, sid, events[lo:hi])
            if rng.random() < 0.5:
                await search_db.index_session(pool, uuid.UUID(sid))
        await search_db.index_session(pool, uuid.UUID(sid))
        rows = await pool.fetch(
            "SELECT event_id, body FROM search_documents WHERE session_id = $1 "
            "ORDER BY event_id",
            uuid.UUID(sid),
        )
        assert [(r["event_id"], r["body"]) for r in rows] == expected, cuts


async def test_the_migration_keeps_the_documents_and_sets_the_watermark(
    fresh_db, monkeypatch
) -> None:
    """On a database the trigger indexed (an open message included), the migration keeps
    every document, starts each session's watermark at its last event, and the next pass
    continues from there: nothing indexed twice, the open message closed whole."""
    everything = migrate_mod.load_migrations()
    before = [m for m in everything if m.version < "0010"]
    assert everything[len(before)].version.startswith("0010")  # the index passes
    monkeypatch.setattr(migrate_mod, "load_migrations", lambda: before)
    await migrate(fresh_db)
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        done = await make_session(pool, "default")
        await add_events(pool, done, [user("old koala"), chunk("old answer"), DONE])
        open_ = await make_session(pool, "default")
        await add_events(pool, open_, [user("open koala"), chunk("half ", "m")])
        empty = await make_session(pool, "default")
        kept = {sid: await docs(pool, sid) for sid in (done, open_, empty)}
        assert kept[open_][1][4] is None  # the trigger left the message open

        monkeypatch.setattr(migrate_mod, "load_migrations", lambda: everything)
        await migrate(fresh_db)
        assert {sid: await docs(pool, sid) for sid in kept} == kept
        assert [await watermark(pool, s) for s in (done, open_, empty)] == [3, 2, 0]
        triggers = await pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'session_events_search'"
        )
        assert triggers == 0

        await add_events(pool, open_, [chunk("done", "m"), DONE])
        await add_events(pool, done, [user("new koala")])
        assert [d[4] for d in await docs(pool, open_)] == ["open koala", "half done"]
        assert [d[4] for d in await docs(pool, done)] == [
            "old koala",
            "old answer",
            "new koala",
        ]
    finally:
        await pool.close()
