"""The event log: contiguous ids across concurrent writers, stored before published."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from shared.db import session_events, sessions
from shared.events import gateway_update, record_events


async def _new_session(pool, workspace_id: str) -> uuid.UUID:
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid, workspace_id=workspace_id, cwd="/tmp", provider="echo"
            ),
        )
    return sid


async def test_concurrent_appends_get_contiguous_ids(pool, workspace_id) -> None:
    sid = await _new_session(pool, workspace_id)

    async def writer(n: int) -> None:
        for i in range(10):
            async with pool.acquire() as conn:
                await session_events.append(
                    conn,
                    sid,
                    [
                        gateway_update(
                            "agent_message_chunk",
                            content={"type": "text", "text": f"{n}-{i}"},
                        )
                    ]
                    * 2,
                )

    await asyncio.gather(*(writer(n) for n in range(4)))
    events = await session_events.after(pool, sid, 0)
    assert [e.event_id for e in events] == list(range(1, 81))
    for event in events:
        body = orjson.loads(event.payload)
        assert body["sessionId"] == str(sid)
        assert body["eventId"] == str(event.event_id)
        assert body["update"]["sessionUpdate"] == "agent_message_chunk"


async def test_record_publishes_stored_events(
    pool, redis, channels, workspace_id
) -> None:
    sid = await _new_session(pool, workspace_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.session_events(str(sid)))
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    stored = await record_events(
        pool,
        redis,
        channels,
        sid,
        [gateway_update("echo_custom", value=1), gateway_update("plan", entries=[])],
    )
    received = []
    async with asyncio.timeout(5):
        while len(received) < 2:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg:
                received.append(msg["data"])
    await pubsub.aclose()
    assert received == [e.payload for e in stored]
    assert [orjson.loads(r)["eventId"] for r in received] == ["1", "2"]
    # unknown kinds are kept verbatim
    assert orjson.loads(received[0])["update"] == {
        "sessionUpdate": "echo_custom",
        "value": 1,
    }


def _chunks(*texts: str) -> list[dict]:
    return [
        gateway_update("agent_message_chunk", content={"type": "text", "text": t})
        for t in texts
    ]


async def test_append_batch_with_a_batch_id_is_idempotent(pool, workspace_id) -> None:
    """A retried batch (same id) is stored once and answers the ids it got first."""
    sid = await _new_session(pool, workspace_id)
    batch = uuid.uuid4()
    first = await session_events.append_batch(
        pool, sid, _chunks("a", "b", "c"), batch_id=batch
    )
    await session_events.append_batch(pool, sid, _chunks("d"), batch_id=uuid.uuid4())
    again = await session_events.append_batch(
        pool, sid, _chunks("a", "b", "c"), batch_id=batch
    )
    assert again == first
    assert [e.event_id for e in first] == [1, 2, 3]
    stored = await session_events.after(pool, sid, 0)
    assert [e.event_id for e in stored] == [1, 2, 3, 4]
    assert stored[:3] == first


async def test_append_batch_retry_racing_the_first_attempt(pool, workspace_id) -> None:
    """The first attempt is still open when the retry starts: the retry waits for it and
    finds its batch instead of storing it again (or failing)."""
    sid = await _new_session(pool, workspace_id)
    batch = uuid.uuid4()
    async with pool.acquire() as first_conn, pool.acquire() as retry_conn:
        tx = first_conn.transaction()
        await tx.start()
        first = await session_events.append_batch(
            first_conn, sid, _chunks("x", "y"), batch_id=batch
        )
        retry = asyncio.create_task(
            session_events.append_batch(
                retry_conn, sid, _chunks("x", "y"), batch_id=batch
            )
        )
        # the retry blocks on the session row until the first attempt ends
        async with asyncio.timeout(10):
            while True:
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
        assert not retry.done()
        await tx.commit()
        async with asyncio.timeout(10):
            assert await retry == first
    stored = await session_events.after(pool, sid, 0)
    assert [e.event_id for e in stored] == [1, 2]


async def _row_state(pool, sid: uuid.UUID) -> tuple[str, str, int]:
    row = await pool.fetchrow(
        "SELECT acp_status, status, last_event_id FROM sessions WHERE session_id = $1",
        sid,
    )
    return row["acp_status"], row["status"], row["last_event_id"]


async def test_append_batch_fenced_idempotent_and_with_state(
    pool, workspace_id
) -> None:
    """One statement does all three: a stale generation stores nothing (events nor
    state), a batch already stored comes back as stored even once the generation moved
    on, and the state lands with its event."""
    sid = await _new_session(pool, workspace_id)
    await pool.execute(
        "UPDATE sessions SET lease_generation = 7 WHERE session_id = $1", sid
    )
    batch = uuid.uuid4()
    ready = session_events.State("ready", "idle")
    first = await session_events.append_batch(
        pool,
        sid,
        [gateway_update("acp_status", status="ready")],
        batch_id=batch,
        state=ready,
        generation=7,
    )
    assert [e.event_id for e in first] == [1]
    assert await _row_state(pool, sid) == ("ready", "idle", 1)

    # another instance takes over: generation 8
    await pool.execute(
        "UPDATE sessions SET lease_generation = 8 WHERE session_id = $1", sid
    )
    try:
        await session_events.append_batch(
            pool,
            sid,
            [gateway_update("acp_status", status="closed")],
            batch_id=uuid.uuid4(),
            state=session_events.State("closed", "closed"),
            generation=7,
        )
    except session_events.LeaseLost:
        pass
    else:
        raise AssertionError("a stale generation stored its batch")
    assert await _row_state(pool, sid) == ("ready", "idle", 1)

    # the retry of the batch stored at generation 7 (its reply lost) finds it
    again = await session_events.append_batch(
        pool,
        sid,
        [gateway_update("acp_status", status="ready")],
        batch_id=batch,
        state=ready,
        generation=7,
    )
    assert again == first
    assert [e.event_id for e in await session_events.after(pool, sid, 0)] == [1]

    # the current generation writes; an unfenced writer (None) too
    await session_events.append_batch(pool, sid, _chunks("a"), generation=8)
    await session_events.append_batch(pool, sid, _chunks("b"))
    assert await _row_state(pool, sid) == ("ready", "idle", 3)
