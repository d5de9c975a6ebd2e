"""GET /api/sessions/events: lifecycle messages from Redis as SSE."""

from __future__ import annotations

import asyncio

from services.common.hub import StreamConfig
from services.common.keys import HUB, STREAM_CONFIG
from services.query.app import create_app
from tests.query.sessions_support import ISO_MS, make_session, next_data


async def _client(aiohttp_client, make_settings, heartbeat: float | None = None):
    app = create_app(make_settings())
    if heartbeat is not None:
        app[STREAM_CONFIG] = StreamConfig(heartbeat_interval=heartbeat)
    return await aiohttp_client(app)


async def test_workspace_stream_gets_its_lifecycle_messages(
    aiohttp_client, make_settings, pool, workspace_id
):
    client = await _client(aiohttp_client, make_settings)
    other_ws = f"{workspace_id}-other"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, 'o')", other_ws)
    mine = await make_session(pool, workspace_id, name="mine")
    theirs = await make_session(pool, other_ws, name="theirs")

    resp = await client.get(
        "/api/sessions/events", params={"workspaceId": workspace_id}
    )
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    connected = await next_data(resp)
    assert connected["type"] == "connected"
    assert connected["workspaceId"] == workspace_id
    assert ISO_MS.match(connected["at"])

    # a change in another workspace first: it must not reach this stream
    assert (
        await client.patch(f"/api/sessions/{theirs}", json={"name": "t2"})
    ).status == 200
    assert (
        await client.patch(f"/api/sessions/{mine}", json={"name": "m2"})
    ).status == 200
    message = await next_data(resp)
    assert message["type"] == "session:updated"
    assert message["sessionId"] == mine
    assert message["workspaceId"] == workspace_id
    assert message["changes"] == {"name": "m2"}

    assert (await client.delete(f"/api/sessions/{mine}")).status == 200
    message = await next_data(resp)
    assert message["type"] == "session:deleted"
    assert message["sessionId"] == mine
    resp.close()


async def test_stream_without_workspace_gets_every_workspace(
    aiohttp_client, make_settings, pool, workspace_id
):
    client = await _client(aiohttp_client, make_settings)
    other_ws = f"{workspace_id}-b"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, 'b')", other_ws)
    one = await make_session(pool, workspace_id)
    two = await make_session(pool, other_ws)

    resp = await client.get("/api/sessions/events")
    connected = await next_data(resp)
    assert connected["type"] == "connected"
    assert "workspaceId" not in connected

    await client.post(f"/api/sessions/{one}/fork")
    await client.patch(f"/api/sessions/{two}", json={"name": "b"})
    seen: list[tuple[str, str]] = []
    while len(seen) < 2:
        message = await next_data(resp)
        # other tests of this run publish too: keep only ours
        if message["workspaceId"] in (workspace_id, other_ws):
            seen.append((message["type"], message["workspaceId"]))
    assert seen == [("session:created", workspace_id), ("session:updated", other_ws)]
    resp.close()


async def test_heartbeats_are_comments(aiohttp_client, make_settings):
    client = await _client(aiohttp_client, make_settings, heartbeat=0.1)
    resp = await client.get("/api/sessions/events", params={"workspaceId": "default"})
    await next_data(resp)
    async with asyncio.timeout(5):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            assert not line.startswith(("id:", "event:", "data:")), line
            if line.startswith(":"):
                break
    resp.close()


async def test_shutdown_ends_open_streams(aiohttp_client, make_settings):
    client = await _client(aiohttp_client, make_settings)
    hub = client.app[HUB]
    resp = await client.get("/api/sessions/events", params={"workspaceId": "default"})
    await next_data(resp)
    # the stream is waiting on its queue; shutting the server down must end it
    async with asyncio.timeout(10):
        await client.server.close()
        assert (await resp.content.read()).strip() == b""
    assert hub.subscriber_count() == 0


async def test_client_leaving_unregisters_the_stream(aiohttp_client, make_settings):
    client = await _client(aiohttp_client, make_settings, heartbeat=0.05)
    hub = client.app[HUB]
    resp = await client.get("/api/sessions/events", params={"workspaceId": "default"})
    await next_data(resp)
    assert hub.subscriber_count() == 1
    resp.close()
    async with asyncio.timeout(10):
        while hub.subscriber_count():
            await asyncio.sleep(0.02)
