"""One echo turn seen from every side at once (issue "ACP gateway", done-when).

A turn is driven through POST /api/acp and read back on two SSE subscribers, on the Redis
session channel and from /history; then streams reconnect with Last-Event-ID at several
points and must get exactly the missing events.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.gateway.app import create_app
from services.query.app import create_app as create_query_app
from tests.gateway.conftest import SseReader, wait_fanout_ready
from tests.gateway.rpcutil import ok

WAIT = 30.0  # hang guard only


async def _read_turn(reader: SseReader) -> list[dict]:
    """Event payloads up to and including turn_complete (the connected frame skipped)."""
    out: list[dict] = []
    while True:
        frame = await reader.frame()
        assert frame is not None, f"stream ended after {len(out)} events"
        if not frame.is_event:
            continue
        params = frame.data["params"]
        assert frame.id == params["eventId"]
        out.append(params)
        if params["update"]["sessionUpdate"] == "turn_complete":
            return out


@pytest.fixture
async def clients(settings, aiohttp_client, cwd_root):
    gateway = await aiohttp_client(create_app(settings))
    await wait_fanout_ready(gateway.app)
    query = await aiohttp_client(create_query_app(settings))
    return gateway, query


async def test_turn_on_two_streams_redis_history_and_reconnects(
    clients, redis, channels, workspace_id
) -> None:
    gateway, query = clients
    created = await ok(gateway, "session/new", {"workspaceId": workspace_id})
    sid = created["sessionId"]
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.session_events(sid))
    await pubsub.get_message(timeout=1.0)

    async with asyncio.timeout(WAIT):
        # Two subscribers, connected before the prompt; both replay from event 1.
        streams = []
        for _ in range(2):
            resp = await gateway.get(f"/api/acp?sessionId={sid}&replay=all")
            assert resp.status == 200
            streams.append((resp, SseReader(resp)))
        reply = await ok(
            gateway, "session/prompt", {"sessionId": sid, "prompt": "hello world"}
        )
        assert reply["stopReason"] == "end_turn"
        seen = [await _read_turn(reader) for _, reader in streams]

    first, second = seen
    assert first == second, "both subscribers get the same events in the same order"
    ids = [int(e["eventId"]) for e in first]
    assert ids == list(range(1, len(ids) + 1)), "contiguous from 1"
    kinds = [e["update"]["sessionUpdate"] for e in first]
    assert kinds[0] == "acp_status"
    assert first[0]["update"]["status"] == "connecting"
    turn = kinds[kinds.index("user_message") :]
    assert turn == ["user_message"] + ["agent_message_chunk"] * 3 + ["turn_complete"]
    text = "".join(
        e["update"]["content"]["text"]
        for e in first
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    )
    assert text == "echo: hello world"
    assert kinds.count("turn_complete") == 1

    # The same events on Redis (from the moment we subscribed) and in /history.
    history = await (await query.get(f"/api/sessions/{sid}/history")).json()
    assert history["history"] == first
    from_redis: list[dict] = []
    async with asyncio.timeout(WAIT):
        while (
            not from_redis
            or from_redis[-1]["update"]["sessionUpdate"] != "turn_complete"
        ):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                from_redis.append(orjson.loads(msg["data"]))
    await pubsub.aclose()
    assert from_redis == first[-len(from_redis) :], (
        "Redis carries the stored events, in order"
    )

    # Reconnect at several points: exactly the events after the anchor, then connected.
    last = ids[-1]
    for anchor in (0, 1, 3, last - 1, last, last + 5):
        resp = await gateway.get(
            f"/api/acp?sessionId={sid}", headers={"Last-Event-ID": str(anchor)}
        )
        assert resp.status == 200
        async with asyncio.timeout(WAIT):
            replayed = await SseReader(resp).until_connected()
        assert [int(f.id or 0) for f in replayed] == list(range(anchor + 1, last + 1))
        resp.close()
    for resp, _ in streams:
        resp.close()
