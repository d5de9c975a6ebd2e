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
