"""Redis goes away and comes back (issue 7 item 3), through a TCP proxy the test controls.

Gateway and query service reach Redis through tests/proxy.py. While it is stopped the
query service answers from Postgres, the gateway keeps running turns, and an SSE
subscriber that stays connected ends up with the complete, contiguous log exactly once.
"""

from __future__ import annotations

import asyncio

from services.gateway.app import create_app as create_gateway
from services.gateway.fanout import StreamConfig
from services.gateway.keys import FANOUT, STREAM_CONFIG
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
            await gw_app[FANOUT].connected.wait()
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
