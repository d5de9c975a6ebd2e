"""REDIS_SHARDED_PUBSUB on a single Redis 7 server: the gateway's streams on SSUBSCRIBE."""

from __future__ import annotations

import asyncio
import uuid

from services.common.keys import HUB
from services.gateway.app import create_app
from shared.channels import Channels
from shared.events import record
from tests.gateway.conftest import SseReader, chunk, wait_fanout_ready


async def test_sharded_pubsub_on_one_server(
    make_settings, aiohttp_client, new_session, pool, redis
) -> None:
    """REDIS_SHARDED_PUBSUB on a plain Redis 7: SPUBLISH in, SSUBSCRIBE out, live."""
    settings = make_settings(redis_sharded_pubsub=True)
    channels = Channels(settings.redis_prefix, sharded=True)
    client = await aiohttp_client(create_app(settings))
    await wait_fanout_ready(client.app)
    assert client.app[HUB].sharded
    sid = await new_session()
    resp = await client.get("/api/acp", params={"sessionId": sid})
    assert resp.status == 200
    reader = SseReader(resp)
    await reader.until_connected()
    name = channels.session_events(sid)
    async with asyncio.timeout(10):
        while (await redis.execute_command("PUBSUB", "SHARDNUMSUB", name))[1] != 1:
            await asyncio.sleep(0.02)
    assert (await redis.pubsub_numsub(name))[0][1] == 0  # not a plain subscription
    async with pool.acquire() as conn:
        stored = await record(
            conn,
            uuid.UUID(sid),
            [chunk("a"), chunk("b")],
            redis=redis,
            channels=channels,
        )
    frames = await reader.events(2)
    assert [int(f.id or 0) for f in frames] == [e.event_id for e in stored]
    resp.close()
