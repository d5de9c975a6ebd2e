"""/api/notes: create/update/delete, filters, groupBy, Redis messages and the live stream."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.hub import Hub, Marker, StreamConfig
from services.common.keys import HUB
from services.common.sse import data_event
from services.query.app import create_app
from shared.db import sessions as sessions_db
from tests.query.ntw_support import next_data, next_line, query_client


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await query_client(aiohttp_client, make_settings)


async def _note(client, **body) -> dict:
    resp = await client.post("/api/notes", json=body)
    assert resp.status in (200, 201), await resp.text()
    return (await resp.json())["note"]


async def test_create_defaults_and_roundtrip(client, workspace_id) -> None:
    weird = "Ünïcode ✓ 🚀 '; DROP TABLE notes; -- " + "x" * 5000
    resp = await client.post(
        "/api/notes",
        json={"workspaceId": workspace_id, "content": weird, "sessionId": "s-1"},
    )
    assert resp.status == 201
    note = (await resp.json())["note"]
    assert note["title"] == "Untitled"
    assert note["content"] == weird
    assert note["metadata"] == {"type": "general"}
    assert note["source"] == "user"
    assert note["sessionId"] == "s-1"
    assert note["workspaceId"] == workspace_id
    assert str(uuid.UUID(note["id"])) == note["id"]
    assert note["createdAt"].endswith("Z")

    resp = await client.get(
        f"/api/notes?workspaceId={workspace_id}&noteId={note['id']}"
    )
    assert resp.status == 200
    assert (await resp.json())["note"] == note

    full = await _note(
        client,
        workspaceId=workspace_id,
        noteId="spec-1",
        title="  Spec  ",
        source="agent",
        metadata={
            "type": "spec",
            "taskStatus": "open",
            "assignedAgentIds": ["a1"],
            "parentNoteId": "p",
            "linkedTaskId": "t",
            "custom": {"k": [1, "two"]},
        },
    )
    assert full["id"] == "spec-1"
    assert full["title"] == "Spec"
    assert full["source"] == "agent"
    assert full["metadata"] == {
        "type": "spec",
        "taskStatus": "open",
        "assignedAgentIds": ["a1"],
        "parentNoteId": "p",
        "linkedTaskId": "t",
        "custom": {"k": [1, "two"]},
    }
    assert "sessionId" not in full
    # type may come as a top-level field too
    assert (await _note(client, workspaceId=workspace_id, type="task"))["metadata"][
        "type"
    ] == "task"


async def test_update_through_post(client, workspace_id) -> None:
    note = await _note(
        client, workspaceId=workspace_id, title="First", content="c1", type="spec"
    )
    resp = await client.post(
        "/api/notes",
        json={"workspaceId": workspace_id, "noteId": note["id"], "content": "c2"},
    )
    assert resp.status == 200
    updated = (await resp.json())["note"]
    assert updated["content"] == "c2"
    assert updated["title"] == "First"  # not sent: unchanged
    assert updated["metadata"]["type"] == "spec"
    assert updated["createdAt"] == note["createdAt"]
    assert updated["updatedAt"] >= note["updatedAt"]


async def test_validation_errors(client, workspace_id) -> None:
    cases = [
        ({"title": "x"}, "workspaceId"),
        ({"workspaceId": workspace_id, "type": "poem"}, "type"),
        ({"workspaceId": workspace_id, "metadata": {"type": "poem"}}, "type"),
        ({"workspaceId": workspace_id, "title": "x" * 201}, "title"),
        ({"workspaceId": workspace_id, "source": "robot"}, "source"),
        ({"workspaceId": workspace_id, "content": 5}, "content"),
        (
            {"workspaceId": workspace_id, "metadata": {"assignedAgentIds": "a"}},
            "metadata.assignedAgentIds",
        ),
    ]
    for body, field in cases:
        resp = await client.post("/api/notes", json=body)
        assert resp.status == 400, body
        assert field in (await resp.json())["error"], body
    resp = await client.post("/api/notes", json=[1, 2])
    assert resp.status == 400
    resp = await client.post(
        "/api/notes", data="x", headers={"Content-Type": "text/plain"}
    )
    assert resp.status == 415

    missing = f"nope-{uuid.uuid4().hex[:6]}"
    resp = await client.post("/api/notes", json={"workspaceId": missing})
    assert resp.status == 404
    assert (await resp.json())["error"] == f"Unknown workspace: {missing}"

    resp = await client.get("/api/notes")
    assert resp.status == 400
    assert (await resp.json())["error"] == "workspaceId is required"
    resp = await client.get(f"/api/notes?workspaceId={missing}")
    assert resp.status == 404
    assert (await resp.json())["error"] == f"Unknown workspace: {missing}"
    resp = await client.get(f"/api/notes?workspaceId={workspace_id}&type=poem")
    assert resp.status == 400
    assert "type" in (await resp.json())["error"]
    resp = await client.get(f"/api/notes?workspaceId={workspace_id}&groupBy=type")
    assert resp.status == 400
    assert "groupBy" in (await resp.json())["error"]
    resp = await client.get(f"/api/notes?workspaceId={workspace_id}&noteId=none")
    assert resp.status == 404
    assert "none" in (await resp.json())["error"]


async def test_list_filters_and_order(client, workspace_id) -> None:
    a = await _note(
        client, workspaceId=workspace_id, title="a", type="spec", sessionId="s1"
    )
    b = await _note(client, workspaceId=workspace_id, title="b", type="task")
    c = await _note(client, workspaceId=workspace_id, title="c", sessionId="s1")
    # touching a moves it to the front
    await _note(client, workspaceId=workspace_id, noteId=a["id"], content="again")

    async def ids(query: str) -> list[str]:
        resp = await client.get(f"/api/notes?workspaceId={workspace_id}{query}")
        assert resp.status == 200
        return [n["id"] for n in (await resp.json())["notes"]]

    assert await ids("") == [a["id"], c["id"], b["id"]]
    assert await ids("&sessionId=s1") == [a["id"], c["id"]]
    assert await ids("&type=task") == [b["id"]]
    assert await ids("&type=general&sessionId=s1") == [c["id"]]
    assert await ids("&sessionId=unknown-session") == []


async def test_group_by_session(client, pool, workspace_id) -> None:
    zed, alpha = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        for sid, name in ((zed, "Zed"), (alpha, "alpha")):
            await sessions_db.insert(
                conn,
                sessions_db.NewSession(
                    session_id=sid,
                    workspace_id=workspace_id,
                    cwd="/tmp",
                    provider="echo",
                    name=name,
                ),
            )
    loose = await _note(client, workspaceId=workspace_id, title="loose")
    z1 = await _note(client, workspaceId=workspace_id, title="z1", sessionId=str(zed))
    a1 = await _note(client, workspaceId=workspace_id, title="a1", sessionId=str(alpha))
    z2 = await _note(client, workspaceId=workspace_id, title="z2", sessionId=str(zed))

    resp = await client.get(f"/api/notes?workspaceId={workspace_id}&groupBy=session")
    assert resp.status == 200
    groups = (await resp.json())["groups"]
    assert [g.get("sessionId") for g in groups] == [str(zed), str(alpha), None]
    assert [g["sessionName"] for g in groups[:2]] == ["Zed", "alpha"]
    assert [n["id"] for n in groups[0]["notes"]] == [z2["id"], z1["id"]]
    assert [n["id"] for n in groups[1]["notes"]] == [a1["id"]]
    assert "sessionId" not in groups[2]
    assert [n["id"] for n in groups[2]["notes"]] == [loose["id"]]

    resp = await client.get(
        f"/api/notes?workspaceId={workspace_id}&groupBy=session&sessionId={alpha}"
    )
    groups = (await resp.json())["groups"]
    assert [g.get("sessionId") for g in groups] == [str(alpha)]


async def test_delete_and_messages(client, redis, channels, workspace_id) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.workspace_notes(workspace_id))
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    try:
        note = await _note(client, workspaceId=workspace_id, title="t", source="agent")
        await _note(client, workspaceId=workspace_id, noteId=note["id"], content="x")
        resp = await client.delete(
            f"/api/notes?workspaceId={workspace_id}&noteId={note['id']}"
        )
        assert resp.status == 200
        assert await resp.json() == {"deleted": True, "noteId": note["id"]}
        resp = await client.delete(
            f"/api/notes?workspaceId={workspace_id}&noteId={note['id']}"
        )
        assert resp.status == 404

        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 3:
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if msg is not None:
                    messages.append(orjson.loads(msg["data"]))
    finally:
        await pubsub.aclose()
    assert [m["type"] for m in messages] == [
        "note:created",
        "note:updated",
        "note:deleted",
    ]
    for m in messages:
        assert m["noteId"] == note["id"]
        assert m["workspaceId"] == workspace_id
        assert m["at"].endswith("Z")
    assert messages[0]["source"] == "agent"
    assert messages[0]["note"]["title"] == "t"
    assert messages[1]["source"] == "user"
    assert messages[1]["note"]["content"] == "x"
    assert "note" not in messages[2]

    resp = await client.delete(f"/api/notes?workspaceId={workspace_id}")
    assert resp.status == 400
    assert "noteId" in (await resp.json())["error"]
    resp = await client.delete("/api/notes?noteId=x")
    assert resp.status == 400
    assert "workspaceId" in (await resp.json())["error"]


async def test_events_reach_subscribers_on_other_instances(
    aiohttp_client, make_settings, workspace_id
) -> None:
    """A note written through instance B reaches a stream open on instance A (via Redis)."""
    a = await query_client(aiohttp_client, make_settings, heartbeat=0.2)
    b = await query_client(aiohttp_client, make_settings)

    resp = await a.get(f"/api/notes/events?workspaceId={workspace_id}")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert "no-cache" in resp.headers["Cache-Control"].split(", ")
    assert resp.headers["X-Accel-Buffering"] == "no"
    connected = await next_data(resp)
    assert connected["type"] == "connected"
    assert connected["workspaceId"] == workspace_id
    assert connected["at"].endswith("Z")

    # the heartbeat is a comment line
    async with asyncio.timeout(5):
        while not (await next_line(resp)).startswith(":"):
            pass

    # a note of another workspace is not delivered
    other = await b.post("/api/workspaces", json={"title": "other"})
    other_ws = (await other.json())["workspace"]["id"]
    await _note(b, workspaceId=other_ws, title="elsewhere")

    note = await _note(b, workspaceId=workspace_id, title="from B")
    created = await next_data(resp)
    assert created["type"] == "note:created"
    assert created["noteId"] == note["id"]
    assert created["note"] == note
    assert created["source"] == "user"

    await b.delete(f"/api/notes?workspaceId={workspace_id}&noteId={note['id']}")
    deleted = await next_data(resp)
    assert deleted["type"] == "note:deleted"
    assert "note" not in deleted
    resp.close()


async def test_events_errors(client) -> None:
    resp = await client.get("/api/notes/events")
    assert resp.status == 400
    assert (await resp.json())["error"] == "workspaceId is required"
    resp = await client.get("/api/notes/events?workspaceId=nope-x")
    assert resp.status == 404
    assert (await resp.json())["error"] == "Unknown workspace: nope-x"


async def test_shutdown_ends_streams(make_settings, workspace_id) -> None:
    app = create_app(make_settings())
    server = TestServer(app)
    client = TestClient(server)
    await client.start_server()
    try:
        streams = [
            await client.get(f"/api/notes/events?workspaceId={workspace_id}")
            for _ in range(2)
        ]
        for resp in streams:
            assert (await next_data(resp))["type"] == "connected"
        hub = app[HUB]
        assert hub.subscriber_count() == 2
        async with asyncio.timeout(10):  # hang guard only
            await (
                server.close()
            )  # runs on_shutdown (sentinels) and the cleanup contexts
        for resp in streams:
            async with asyncio.timeout(5):
                rest = await resp.content.read()
            assert rest.strip() == b""  # only the blank line that closed the last frame
            assert resp.content.at_eof()
        assert hub.subscriber_count() == 0
    finally:
        await client.close()


async def test_slow_subscriber_is_closed(workspace_id) -> None:
    """A full queue ends that stream instead of growing without bound."""
    hub = Hub("redis://127.0.0.1:1", StreamConfig(queue_size=16))  # never started
    slow = await hub.subscribe("chan", "chan", data_event)
    fast = await hub.subscribe("chan", "chan", data_event)
    for i in range(hub.config.queue_size):
        hub.dispatch("chan", b"%d" % i)
        fast.queue.get_nowait()
    hub.dispatch("chan", b"overflow")
    assert slow.closed_reason == "overflow"
    assert slow.queue.get_nowait() is Marker.CLOSE
    assert not fast.closed
    assert fast.queue.get_nowait() == (0, b"data: overflow\n\n")
    await hub.unsubscribe(slow)
    assert hub.subscriber_count() == 1
    await hub.stop()


async def test_nul_characters_are_refused_not_500(client, workspace_id) -> None:
    resp = await client.post(
        "/api/notes", json={"workspaceId": workspace_id, "content": "a\u0000b"}
    )
    assert resp.status == 400
    assert "content" in (await resp.json())["error"]
    resp = await client.get("/api/notes?workspaceId=a%00b")
    assert resp.status == 400
    assert "workspaceId" in (await resp.json())["error"]
    resp = await client.get(f"/api/notes?workspaceId={workspace_id}&sessionId=a%00b")
    assert resp.status == 400
    assert "sessionId" in (await resp.json())["error"]
    resp = await client.get("/api/tasks/a%00b")
    assert resp.status == 404
    resp = await client.delete("/api/workspaces/a%00b")
    assert resp.status == 404
