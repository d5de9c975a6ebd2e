"""The event writer under Postgres faults the proxy makes on every run (issue 12, defects 5, 12).

- Committed but not acknowledged: Postgres stores a batch, the reply never arrives, the
  connection drops; the writer's retry must not store the batch a second time.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson

from services.gateway.eventlog import EventWriter
from shared.db import session_events, sessions
from shared.db.connect import create_pool
from shared.events import gateway_update
from tests.proxy import TcpProxy

WAIT = 20.0  # hang guard only


async def _session(pool, workspace_id) -> uuid.UUID:
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid, workspace_id=workspace_id, cwd="/tmp", provider="echo"
            ),
        )
    return sid


def _chunk(i: int) -> dict:
    return gateway_update(
        "agent_message_chunk", content={"type": "text", "text": str(i)}
    )


async def _texts(pool, sid) -> list[tuple[int, str]]:
    stored = await session_events.after(pool, sid, 0)
    return [
        (e.event_id, orjson.loads(e.payload)["update"]["content"]["text"])
        for e in stored
    ]


async def _wait_stored(pool, sid, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while await session_events.count(pool, sid) < count:
            await asyncio.sleep(0.01)


async def test_batch_committed_but_not_acknowledged_is_stored_once(
    database_url, pool, redis, channels, workspace_id
):
    sid = await _session(pool, workspace_id)
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    proxied = await create_pool(proxy.rewrite(database_url), min_size=1, max_size=2)
    writer = EventWriter(proxied, redis, channels, sid)
    try:
        for round_ in range(3):
            base = round_ * 10
            writer.append(_chunk(base))
            await writer.flush()
            # the next batch reaches Postgres and commits; its reply is lost
            proxy.drop_replies = True
            for i in range(base + 1, base + 10):
                writer.append(_chunk(i))
            await _wait_stored(pool, sid, base + 10)
            proxy.drop_replies = False
            await proxy.cut()  # the writer sees the connection fail and retries
            async with asyncio.timeout(WAIT):
                await writer.flush()
            assert await _texts(pool, sid) == [
                (i + 1, str(i)) for i in range(base + 10)
            ]
    finally:
        proxy.drop_replies = False
        await writer.close()
        await proxied.close()
        await proxy.stop()
