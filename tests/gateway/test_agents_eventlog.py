"""The per-session batched event writer: order, contiguous ids, batching, Postgres outages."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from services.gateway.eventlog import EventWriter
from shared.db import session_events
from shared.db.connect import create_pool
from tests.gateway.eventlog_support import chunk, new_session
from tests.proxy import TcpProxy


async def _texts(pool, sid) -> list[tuple[int, str]]:
    stored = await session_events.after(pool, sid, 0)
    return [
        (e.event_id, orjson.loads(e.payload)["update"]["content"]["text"])
        for e in stored
    ]


async def test_batches_in_order_and_publishes(pool, redis, channels, workspace_id):
    sid = await new_session(pool, workspace_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.session_events(str(sid)))
    batches: list[int] = []
    writer = EventWriter(
        pool,
        redis,
        channels,
        sid,
        workspace_id=workspace_id,
        on_batch=lambda n, _s: batches.append(n),
    )
    try:
        for i in range(300):
            writer.append(chunk(i))
        await writer.flush()
        assert await _texts(pool, sid) == [(i + 1, str(i)) for i in range(300)]
        assert sum(batches) == 300
        assert len(batches) < 300  # a burst is stored in a few transactions
        published = []
        async with asyncio.timeout(10):
            while len(published) < 300:
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if msg:
                    published.append(orjson.loads(msg["data"])["eventId"])
        assert published == [str(i + 1) for i in range(300)]
    finally:
        await writer.close()
        await pubsub.aclose()


async def test_postgres_outage_retries_without_loss(
    database_url, pool, redis, channels, workspace_id
):
    sid = await new_session(pool, workspace_id)
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    proxied = await create_pool(proxy.rewrite(database_url), min_size=1, max_size=2)
    writer = EventWriter(proxied, redis, channels, sid, workspace_id=workspace_id)
    try:
        writer.append(chunk(0))
        await writer.flush()
        await proxy.stop()
        await proxy.cut()
        for i in range(1, 20):
            writer.append(chunk(i))
        # nothing can be stored while Postgres is unreachable
        assert [t for _, t in await _texts(pool, sid)] == ["0"]
        await proxy.start()
        async with asyncio.timeout(20):
            await writer.flush()
        assert await _texts(pool, sid) == [(i + 1, str(i)) for i in range(20)]
    finally:
        await writer.close()
        await proxied.close()
        await proxy.stop()


async def test_activity_invalidates_only_its_workspaces_lists(
    pool, redis, channels, workspace_id
):
    """lastActivity moves the lists of the session's workspace and the unscoped ones; a
    list cached for another workspace stays."""
    sid = await new_session(pool, workspace_id)
    other = f"ws-other-{uuid.uuid4().hex[:8]}"
    await redis.hset(channels.cache_sessions_lists(other), "q", b"[]")
    await redis.hset(channels.cache_sessions_lists(None), "q", b"[]")
    await redis.hset(channels.cache_sessions_lists(workspace_id), "q", b"[]")
    writer = EventWriter(pool, redis, channels, sid, workspace_id=workspace_id)
    try:
        writer.append(chunk(0))
        await writer.flush()
        async with asyncio.timeout(30):
            while (
                await redis.get(channels.cache_sessions_generation(workspace_id))
                is None
            ):
                await asyncio.sleep(0.05)
    finally:
        await writer.close()
    assert not await redis.exists(channels.cache_sessions_lists(workspace_id))
    assert not await redis.exists(channels.cache_sessions_lists(None))
    assert await redis.get(channels.cache_sessions_generation(None)) is not None
    assert await redis.hget(channels.cache_sessions_lists(other), "q") == b"[]"
    assert await redis.get(channels.cache_sessions_generation(other)) is None
