"""The event writer under Postgres faults the proxy makes on every run (issue 12, defects 5, 12).

- Committed but not acknowledged: Postgres stores a batch, the reply never arrives, the
  connection drops; the writer's retry must not store the batch a second time.
- Postgres down during a flood: the gateway buffers up to EVENT_BUFFER_BYTES, then stops
  reading the agent's stdout (the agent waits); memory stays bounded, nothing is lost.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from services.gateway.app import create_app as create_gateway
from services.gateway.eventlog import EventWriter
from services.gateway.keys import SESSION_MANAGER
from shared.db import session_events
from shared.db.connect import create_pool
from tests.faults.support import wait_gone
from tests.gateway.eventlog_support import chunk, new_session
from tests.gateway.rpcutil import call, ok, wait_ready
from tests.gateway.test_agents_eventlog import _texts
from tests.proxy import TcpProxy

WAIT = 20.0  # hang guard only
FLOOD = 100_000
BUFFER = 1024 * 1024  # EVENT_BUFFER_BYTES of the flood test
# Generous: the buffer, the pipe's read-ahead and allocator noise. Without a bound the
# gateway took about 1.4 KB per buffered event (over 100 MB for this flood).
RSS_BOUND = 40 * 1024 * 1024


def _rss() -> int:
    """This process's resident set (the gateway runs in it), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _wait_stored(pool, sid, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while await session_events.count(pool, sid) < count:
            await asyncio.sleep(0.01)


async def test_batch_committed_but_not_acknowledged_is_stored_once(
    database_url, pool, redis, channels, workspace_id
):
    sid = await new_session(pool, workspace_id)
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    proxied = await create_pool(proxy.rewrite(database_url), min_size=1, max_size=2)
    writer = EventWriter(proxied, redis, channels, sid, workspace_id=workspace_id)
    try:
        for round_ in range(3):
            base = round_ * 10
            writer.append(chunk(base))
            await writer.flush()
            # the next batch reaches Postgres and commits; its reply is lost
            proxy.drop_replies = True
            for i in range(base + 1, base + 10):
                writer.append(chunk(i))
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


async def _wait_chunk_stored(pool, sid: str) -> None:
    """The turn streams: stop Postgres after this (its user_message is stored)."""
    async with asyncio.timeout(WAIT):
        while not await pool.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1"
            " AND kind = 'agent_message_chunk'",
            uuid.UUID(sid),
        ):
            await asyncio.sleep(0.01)


@pytest.fixture
async def pg_proxy(database_url):
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_flood_while_postgres_is_down_keeps_memory_bounded(
    pg_proxy, make_settings, aiohttp_client, database_url, cwd_root, pool, workspace_id
):
    settings = make_settings(
        database_url=pg_proxy.rewrite(database_url), event_buffer_bytes=BUFFER
    )
    gw = await aiohttp_client(create_gateway(settings))
    manager = gw.app[SESSION_MANAGER]
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    writer = manager.live[sid].writer
    before = _rss()
    turn = asyncio.create_task(
        call(gw, "session/prompt", {"sessionId": sid, "prompt": f"/flood {FLOOD}"})
    )
    await _wait_chunk_stored(pool, sid)
    await pg_proxy.stop()
    try:
        # until the gateway has either read the whole flood (unbounded) or stopped reading
        peak = before
        async with asyncio.timeout(WAIT * 6):
            while True:
                peak = max(peak, _rss())
                backlog = writer._appended - writer._stored
                if backlog >= FLOOD or manager.deps.event_buffer.readers_waiting:
                    break
                await asyncio.sleep(0.02)
        peak = max(peak, _rss())
        assert backlog < FLOOD, "the whole flood was buffered in memory"
        assert peak - before < RSS_BOUND, f"RSS grew {(peak - before) >> 20} MiB"
        assert not turn.done()  # the agent waits on its stdout
    finally:
        await pg_proxy.start()
    async with asyncio.timeout(WAIT * 6):
        reply = await turn
    assert reply["result"]["stopReason"] == "end_turn", reply
    stored = await session_events.after(pool, uuid.UUID(sid), 0)
    assert [e.event_id for e in stored] == list(range(1, len(stored) + 1))
    texts = [
        body["update"]["content"]["text"]
        for body in map(orjson.loads, (e.payload for e in stored))
        if body["update"]["sessionUpdate"] == "agent_message_chunk"
    ]
    assert texts == [f"{i} " for i in range(1, FLOOD + 1)]
    kinds = [orjson.loads(e.payload)["update"]["sessionUpdate"] for e in stored[-2:]]
    assert kinds[-1] == "turn_complete"


async def test_stopping_an_agent_held_back_by_the_buffer(
    pg_proxy, make_settings, aiohttp_client, database_url, cwd_root, pool, workspace_id
):
    """An agent held back by a full buffer (Postgres down) can still be stopped: it is
    reaped, and the stopped session's events no longer count against the buffer."""
    settings = make_settings(
        database_url=pg_proxy.rewrite(database_url), event_buffer_bytes=BUFFER
    )
    gw = await aiohttp_client(create_gateway(settings))
    manager = gw.app[SESSION_MANAGER]
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    agent = manager.live[sid].agent
    assert agent is not None
    assert agent.pid is not None
    turn = asyncio.create_task(
        call(gw, "session/prompt", {"sessionId": sid, "prompt": f"/flood {FLOOD}"})
    )
    await _wait_chunk_stored(pool, sid)
    await pg_proxy.stop()
    try:
        async with asyncio.timeout(WAIT):
            while not manager.deps.event_buffer.readers_waiting:
                await asyncio.sleep(0.02)
        async with asyncio.timeout(WAIT):  # hang guard: the writer gives up after 5 s
            await manager.stop_quiet(sid, "disconnected")
        assert agent.exited.done()
        await wait_gone(agent.pid)
        assert manager.deps.event_buffer.used == 0  # the stopped session holds no room
    finally:
        await pg_proxy.start()
    async with asyncio.timeout(WAIT):
        reply = await turn
    assert reply["error"]["code"] == -32000, reply


async def test_stop_while_postgres_is_down_ends(
    pg_proxy, make_settings, aiohttp_client, database_url, cwd_root, pool, workspace_id
):
    """The closed state is written with its event through the writer; while Postgres is
    down a stop waits for it a bounded time, then tears down (shutdown must not hang)."""
    settings = make_settings(database_url=pg_proxy.rewrite(database_url))
    gw = await aiohttp_client(create_gateway(settings))
    manager = gw.app[SESSION_MANAGER]
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    live = manager.live[sid]
    assert live.agent is not None
    pid = live.agent.pid
    await pg_proxy.stop()
    try:
        async with asyncio.timeout(WAIT):  # hang guard
            await live.stop(reason="shutdown")
        assert sid not in manager.live
        await wait_gone(pid)
    finally:
        await pg_proxy.start()
