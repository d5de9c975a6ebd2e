"""The gateway indexes for search outside its event-append transactions.

Its event writer runs an index pass when it has nothing left to store and a stored batch
can change a document; a turn's reply waits for the pass over the turn. A claimed session
and a session closed for a dead owner get a pass, so what a crashed owner stored but never
indexed becomes searchable.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from services.gateway import eventlog
from services.gateway.eventlog import EventWriter
from shared.db import search as search_db
from shared.events import encode_batch, gateway_update, store
from tests.gateway.conftest import chunk, new_ready_session, user_message
from tests.gateway.rpcutil import ok

WAIT = 30.0  # hang guard only
DOCS = """SELECT kind, body FROM search_documents
          WHERE session_id = $1 ORDER BY first_event_id"""


async def docs(pool, sid: str) -> list[tuple[str, str | None]]:
    return [(r["kind"], r["body"]) for r in await pool.fetch(DOCS, uuid.UUID(sid))]


async def wait_docs(pool, sid: str, count: int) -> list[tuple[str, str | None]]:
    async with asyncio.timeout(WAIT):
        while True:
            found = await docs(pool, sid)
            if len(found) >= count and all(body is not None for _, body in found):
                return found
            await asyncio.sleep(0.05)


async def store_only(pool, sid: str, updates: list[dict[str, Any]]) -> None:
    """Store as an owner does and then crash: no index pass."""
    async with pool.acquire() as conn:
        await store(conn, uuid.UUID(sid), *encode_batch(updates))


async def test_the_writer_indexes_only_batches_that_can_change_a_document(
    pool, redis, channels, new_session, workspace_id, monkeypatch
) -> None:
    passes: list[bool] = []
    real = search_db.index_session

    async def counted(conn, session_id: uuid.UUID) -> bool:
        passes.append(await real(conn, session_id))
        return passes[-1]

    monkeypatch.setattr(search_db, "index_session", counted)
    sid = await new_session()
    writer = EventWriter(
        pool, redis, channels, uuid.UUID(sid), workspace_id=workspace_id
    )
    try:
        writer.append(gateway_update("acp_status", status="connecting"))
        writer.append(gateway_update("acp_status", status="ready"))
        await writer.indexed()
        assert passes == []  # session/new and its status changes: no pass
        writer.append(user_message("dugong grazing"))
        writer.append(chunk("sea "))
        writer.append(chunk("cow"))
        await writer.indexed()
        assert passes == [True]  # for the prompt; the message is open until it ends
        assert await docs(pool, sid) == [
            ("user_message", "dugong grazing"),
            ("agent_message", None),
        ]
        writer.append(gateway_update("turn_complete", stopReason="end_turn"))
        await writer.indexed()
        assert passes == [True, False]  # closed by an event without text
        assert await docs(pool, sid) == [
            ("user_message", "dugong grazing"),
            ("agent_message", "sea cow"),
        ]
        writer.append(gateway_update("acp_status", status="closed"))
        await writer.indexed()
        assert passes == [True, False]
        # chunks alone: their message is searchable once it ends, not before
        writer.append(chunk("manatee "))
        await writer.indexed()
        writer.append(chunk("too"))
        await writer.indexed()
        assert passes == [True, False]
        writer.append(gateway_update("turn_complete", stopReason="end_turn"))
        await writer.indexed()
        assert passes == [True, False, False]
        assert (await docs(pool, sid))[-1] == ("agent_message", "manatee too")
    finally:
        await writer.close()


async def test_a_flood_turn_is_searchable_when_its_prompt_returns(
    gateway, pool, workspace_id
) -> None:
    sid = await new_ready_session(gateway, pool, workspace_id)
    out = await ok(
        gateway, "session/prompt", {"sessionId": sid, "prompt": "/flood 5000"}
    )
    assert out["stopReason"] == "end_turn"
    # no wait: the reply came after the pass over the turn
    hits = await search_db.search(pool, workspace_id, "4999", 10)
    assert [(h.session_id, h.kind) for h in hits] == [(sid, "agent_message")]
    found = await docs(pool, sid)
    assert found[0] == ("user_message", "/flood 5000")
    assert found[1][1] == "".join(f"{i} " for i in range(1, 5001))
    hits = await search_db.search(pool, workspace_id, "5000", 10)
    assert {h.kind for h in hits} == {"user_message", "agent_message"}


async def test_a_claim_indexes_what_a_crashed_owner_stored(
    gateway, pool, new_session
) -> None:
    """The owner stored a whole turn and died before its pass: resuming the session
    here (a claim) indexes it, though nothing the resume stores is text."""
    sid = await new_session()
    await store_only(
        pool,
        sid,
        [
            user_message("wombat tunnels"),
            chunk("wombats dig "),
            chunk("tunnels"),
            gateway_update("turn_complete", stopReason="end_turn"),
        ],
    )
    assert await docs(pool, sid) == []
    await ok(gateway, "session/load", {"sessionId": sid})
    assert await wait_docs(pool, sid, 2) == [
        ("user_message", "wombat tunnels"),
        ("agent_message", "wombats dig tunnels"),
    ]


async def test_closing_a_dead_owners_session_indexes_its_tail(
    new_gw, new_session, pool
) -> None:
    """The owner died mid-message before its pass; the instance that closes the session
    for it (the sweeper) ends the turn and indexes, closing the message."""
    sid = uuid.UUID(
        await new_session(
            acp_status="ready",
            status="active",
            owner_instance_id=f"dead-{uuid.uuid4().hex[:6]}",
            lease_ttl=60,
        )
    )
    await store_only(
        pool, str(sid), [user_message("quokka smiles"), chunk("happy quokka")]
    )
    await pool.execute(
        "UPDATE sessions SET lease_expires_at = now() - interval '1 second'"
        " WHERE session_id = $1",
        sid,
    )
    await new_gw("b")
    assert await wait_docs(pool, str(sid), 2) == [
        ("user_message", "quokka smiles"),
        ("agent_message", "happy quokka"),
    ]


async def test_a_long_message_is_indexed_as_it_goes(
    pool, redis, channels, new_session, workspace_id, monkeypatch
) -> None:
    """Past INDEX_BACKLOG chunks a pass runs without waiting for the message's end, so
    the end's pass is short; the text kept so far makes the whole body."""
    passes: list[bool] = []
    real = search_db.index_session

    async def counted(conn, session_id: uuid.UUID) -> bool:
        passes.append(await real(conn, session_id))
        return passes[-1]

    monkeypatch.setattr(search_db, "index_session", counted)
    monkeypatch.setattr(eventlog, "INDEX_BACKLOG", 4)
    sid = await new_session()
    writer = EventWriter(
        pool, redis, channels, uuid.UUID(sid), workspace_id=workspace_id
    )
    try:
        for i in range(10):
            writer.append(chunk(f"m{i} "))
            await writer.flush()
        async with asyncio.timeout(WAIT):
            while len(passes) < 2:
                await asyncio.sleep(0.02)
        assert all(passes)  # each one leaves the message open
        writer.append(gateway_update("turn_complete", stopReason="end_turn"))
        await writer.indexed()
        assert passes[-1] is False
    finally:
        await writer.close()
    assert await docs(pool, sid) == [
        ("agent_message", "".join(f"m{i} " for i in range(10)))
    ]
