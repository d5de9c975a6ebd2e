"""The event log: one byte layout (shared.events), contiguous ids across concurrent writers,
stored before published, idempotent batches with their state."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from shared.db import session_events
from shared.events import (
    SSE_DATA_PREFIX,
    encode,
    encode_batch,
    event_id_of,
    gateway_update,
    record,
    sse_frame,
    store,
)
from tests.gateway.eventlog_support import new_session

SID = "6f0c1e2a-0000-4000-8000-000000000001"


def test_encode_is_the_event_object_with_our_ids_first() -> None:
    """The stored bytes are plain JSON of the event object, sessionId and eventId first;
    the params' own sessionId and eventId are replaced, everything else kept verbatim."""
    params = {
        "sessionId": "the-agent's",
        "eventId": "x",
        "update": {"sessionUpdate": "future_kind", "big": 2**70, "text": "é\u2028"},
        "_meta": {"traceparent": "00-1-2-01"},
    }
    payload = encode(SID, 42, params)
    assert payload.startswith(b'{"sessionId":"%s","eventId":"42",' % SID.encode())
    assert orjson.loads(payload) == {
        "sessionId": SID,
        "eventId": "42",
        "update": params["update"],
        "_meta": params["_meta"],
    }
    assert event_id_of(payload) == 42
    # nothing but our ids: still a complete object
    assert encode(SID, 7, {}) == b'{"sessionId":"%s","eventId":"7"}' % SID.encode()
    assert event_id_of(encode(SID, 7, {})) == 7


def test_event_id_of_other_layouts() -> None:
    """A payload not written by us (another order of keys) is parsed; garbage is None."""
    assert event_id_of(b'{"update":{},"eventId":"9","sessionId":"s"}') == 9
    assert event_id_of(b"not json") is None
    assert event_id_of(b'{"eventId":"nine"}') is None


def test_sse_frame_wraps_the_payload_in_a_notification() -> None:
    payload = encode(SID, 3, gateway_update("plan", entries=[]))
    frame = sse_frame(3, payload)
    assert frame == b"id: 3\n" + SSE_DATA_PREFIX + payload + b"}\n\n"
    data = frame.split(b"\n")[1].removeprefix(b"data: ")
    assert orjson.loads(data) == {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": orjson.loads(payload),
    }


async def test_stored_bytes_are_encode(pool, workspace_id) -> None:
    """What Postgres holds and `store` returns is `encode`, byte for byte."""
    sid = await new_session(pool, workspace_id)
    params = [gateway_update("plan", entries=[]), {"update": {"x": "\u00e9"}}, {}]
    stored = await record(pool, sid, params)
    assert [e.payload for e in stored] == [
        encode(str(sid), i + 1, p) for i, p in enumerate(params)
    ]
    assert await session_events.after(pool, sid, 0) == stored
    kinds = await pool.fetch(
        "SELECT kind FROM session_events WHERE session_id = $1 ORDER BY event_id", sid
    )
    assert [r["kind"] for r in kinds] == ["plan", "unknown", "unknown"]


async def test_concurrent_appends_get_contiguous_ids(pool, workspace_id) -> None:
    sid = await new_session(pool, workspace_id)

    async def writer(n: int) -> None:
        for i in range(10):
            async with pool.acquire() as conn:
                await record(
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
    sid = await new_session(pool, workspace_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.session_events(str(sid)))
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    stored = await record(
        pool,
        sid,
        [gateway_update("echo_custom", value=1), gateway_update("plan", entries=[])],
        redis=redis,
        channels=channels,
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


async def _store(conn, sid: uuid.UUID, params_list, **kwargs):
    """The gateway writer's store (kinds and encoded rests, batch id, state, fence)."""
    return await store(conn, sid, *encode_batch(params_list), **kwargs)


def _chunks(*texts: str) -> list[dict]:
    return [
        gateway_update("agent_message_chunk", content={"type": "text", "text": t})
        for t in texts
    ]


async def test_append_batch_with_a_batch_id_is_idempotent(pool, workspace_id) -> None:
    """A retried batch (same id) is stored once and answers the ids it got first."""
    sid = await new_session(pool, workspace_id)
    batch = uuid.uuid4()
    first = await _store(pool, sid, _chunks("a", "b", "c"), batch_id=batch)
    await _store(pool, sid, _chunks("d"), batch_id=uuid.uuid4())
    again = await _store(pool, sid, _chunks("a", "b", "c"), batch_id=batch)
    assert again == first
    assert [e.event_id for e in first] == [1, 2, 3]
    stored = await session_events.after(pool, sid, 0)
    assert [e.event_id for e in stored] == [1, 2, 3, 4]
    assert stored[:3] == first


async def test_append_batch_retry_racing_the_first_attempt(pool, workspace_id) -> None:
    """The first attempt is still open when the retry starts: the retry waits for it and
    finds its batch instead of storing it again (or failing)."""
    sid = await new_session(pool, workspace_id)
    batch = uuid.uuid4()
    async with pool.acquire() as first_conn, pool.acquire() as retry_conn:
        tx = first_conn.transaction()
        await tx.start()
        first = await _store(first_conn, sid, _chunks("x", "y"), batch_id=batch)
        retry = asyncio.create_task(
            _store(retry_conn, sid, _chunks("x", "y"), batch_id=batch)
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
    sid = await new_session(pool, workspace_id)
    await pool.execute(
        "UPDATE sessions SET lease_generation = 7 WHERE session_id = $1", sid
    )
    batch = uuid.uuid4()
    ready = session_events.State("ready", "idle")
    first = await _store(
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
        await _store(
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
    again = await _store(
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
    await _store(pool, sid, _chunks("a"), generation=8)
    await _store(pool, sid, _chunks("b"))
    assert await _row_state(pool, sid) == ("ready", "idle", 3)
