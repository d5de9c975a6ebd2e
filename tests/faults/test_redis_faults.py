"""Redis goes away and comes back (issue 7 item 3), through a TCP proxy the test controls.

Gateway and query service reach Redis through tests/proxy.py. While it is stopped the
query service answers from Postgres, the gateway keeps running turns, and an SSE
subscriber that stays connected ends up with the complete, contiguous log exactly once.
"""

from __future__ import annotations

import asyncio

from services.common.hub import StreamConfig
from services.common.keys import HUB, STREAM_CONFIG
from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from tests.gateway.conftest import SseReader
from tests.gateway.rpcutil import events, ok, wait_ready
from tests.proxy import TcpProxy

HANG_GUARD = 30.0
OUTAGES = 2


async def test_redis_outage_streams_complete_log_once(
    make_settings, aiohttp_client, redis_url, pool, workspace_id, cwd_root
):
    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    try:
        settings = make_settings(redis_url=proxy.rewrite(redis_url))
        gw_app = create_gateway(settings)
        gw_app[STREAM_CONFIG] = StreamConfig(poll_interval=0.1, heartbeat_interval=1)
        gw = await aiohttp_client(gw_app)
        q = await aiohttp_client(create_query(settings))
        async with asyncio.timeout(HANG_GUARD):
            await gw_app[HUB].connected.wait()
        sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
        await wait_ready(pool, sid)
        resp = await gw.get(
            "/api/acp", params={"sessionId": sid, "replay": "all"}, timeout=None
        )
        assert resp.status == 200
        reader = SseReader(resp)
        received = [int(f.id or 0) for f in await reader.until_connected()]

        for outage in range(OUTAGES):
            await proxy.stop()
            # turns go on; their events reach the open stream from the log
            for i in range(3):
                text = f"outage {outage} prompt {i}"
                out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": text})
                assert out["stopReason"] == "end_turn"
            # the query service serves from Postgres, never an error
            resp_list = await q.get(
                "/api/sessions", params={"workspaceId": workspace_id}
            )
            assert resp_list.status == 200
            listed = (await resp_list.json())["sessions"]
            assert sid in [s["sessionId"] for s in listed]
            resp_one = await q.get(f"/api/sessions/{sid}")
            assert resp_one.status == 200
            history = await q.get(f"/api/sessions/{sid}/history")
            assert history.status == 200
            assert (await gw.get("/healthz")).status == 200
            await proxy.start()
            out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "back"})
            assert out["stopReason"] == "end_turn"
            stored = len(await events(pool, sid))
            async with asyncio.timeout(HANG_GUARD):
                while len(received) < stored:
                    frame = await reader.frame()
                    assert frame is not None, "stream ended"
                    if frame.is_event:
                        received.append(int(frame.id or 0))
            # complete, in order, no duplicates
            assert received == list(range(1, stored + 1))

        # a new stream after the outages replays the same log
        resp2 = await gw.get(
            "/api/acp", params={"sessionId": sid, "replay": "all"}, timeout=None
        )
        replay = [int(f.id or 0) for f in await SseReader(resp2).until_connected()]
        assert replay == received
        resp.close()
        resp2.close()
    finally:
        await proxy.stop()


async def test_query_live_streams_resume_after_a_redis_outage(
    make_settings, aiohttp_client, redis_url, redis, workspace_id
):
    """The query service's hub reconnects (with backoff) and re-subscribes: an open notes
    stream and an open lifecycle stream get what is published after Redis is back."""
    from shared.channels import Channels
    from tests.query.sessions_support import next_data

    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    try:
        settings = make_settings(redis_url=proxy.rewrite(redis_url))
        names = Channels(settings.redis_prefix)
        app = create_query(settings)
        app[STREAM_CONFIG] = StreamConfig(poll_interval=0.05, heartbeat_interval=1)
        q = await aiohttp_client(app)
        hub = app[HUB]
        async with asyncio.timeout(HANG_GUARD):
            await hub.connected.wait()
        ws = {"workspaceId": workspace_id}
        notes = await q.get("/api/notes/events", params=ws, timeout=None)
        lifecycle = await q.get("/api/sessions/events", params=ws, timeout=None)
        assert (await next_data(notes))["type"] == "connected"
        assert (await next_data(lifecycle))["type"] == "connected"

        await proxy.stop()
        async with asyncio.timeout(HANG_GUARD):
            while hub.connected.is_set():
                await asyncio.sleep(0.02)
        await proxy.start()
        notes_channel = names.workspace_notes(workspace_id)
        async with asyncio.timeout(HANG_GUARD):
            await hub.connected.wait()  # the lifecycle pattern is subscribed again
            while (
                dict(await redis.pubsub_numsub(notes_channel)).get(
                    notes_channel.encode(), 0
                )
                < 1
            ):
                await asyncio.sleep(0.02)

        await redis.publish(notes_channel, b'{"type":"note:created","n":1}')
        await redis.publish(
            names.workspace_sessions(workspace_id), b'{"type":"session:created","n":2}'
        )
        assert await next_data(notes, timeout=HANG_GUARD) == {
            "type": "note:created",
            "n": 1,
        }
        assert await next_data(lifecycle, timeout=HANG_GUARD) == {
            "type": "session:created",
            "n": 2,
        }
        assert hub.subscriber_count() == 2
        notes.close()
        lifecycle.close()
    finally:
        await proxy.stop()
