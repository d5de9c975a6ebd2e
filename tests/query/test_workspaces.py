"""/api/workspaces: CRUD, validation, and the delete that takes sessions, notes and tasks along."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from shared.db import sessions as sessions_db
from tests.query.ntw_support import query_client


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await query_client(aiohttp_client, make_settings)


async def test_create_get_list_patch(client) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    resp = await client.post(
        "/api/workspaces",
        json={
            "id": ws,
            "title": "  Ünïcode 工作区 '; DROP TABLE workspaces; --  ",
            "codebases": [
                {"id": "cb1", "repoPath": "/src/a", "branch": "main"},
                {"repoPath": "/src/b"},
            ],
        },
    )
    assert resp.status == 201
    created = (await resp.json())["workspace"]
    assert created["id"] == ws
    assert created["title"] == "Ünïcode 工作区 '; DROP TABLE workspaces; --"
    assert created["status"] == "active"
    assert created["codebases"][0] == {
        "id": "cb1",
        "repoPath": "/src/a",
        "branch": "main",
    }
    second = created["codebases"][1]
    assert second["repoPath"] == "/src/b"
    assert "branch" not in second
    assert second["id"]
    assert created["createdAt"].endswith("Z")
    assert len(created["createdAt"]) == len("2026-03-03T10:00:00.000Z")

    resp = await client.get(f"/api/workspaces/{ws}")
    assert resp.status == 200
    assert (await resp.json())["workspace"] == created

    resp = await client.get("/api/workspaces")
    listed = (await resp.json())["workspaces"]
    ids = [w["id"] for w in listed]
    assert ids[0] == "default"
    assert ws in ids

    resp = await client.patch(
        f"/api/workspaces/{ws}",
        json={
            "title": "Renamed",
            "status": "archived",
            "codebases": [{"repoPath": "/x"}],
        },
    )
    assert resp.status == 200
    patched = (await resp.json())["workspace"]
    assert patched["title"] == "Renamed"
    assert patched["status"] == "archived"
    assert [c["repoPath"] for c in patched["codebases"]] == ["/x"]

    # a PATCH without codebases keeps them
    resp = await client.patch(f"/api/workspaces/{ws}", json={"status": "active"})
    assert [c["repoPath"] for c in (await resp.json())["workspace"]["codebases"]] == [
        "/x"
    ]


async def test_generated_id_and_errors(client) -> None:
    resp = await client.post("/api/workspaces", json={"title": "No id"})
    assert resp.status == 201
    ws = (await resp.json())["workspace"]["id"]
    assert str(uuid.UUID(ws)) == ws

    resp = await client.post("/api/workspaces", json={"id": ws, "title": "again"})
    assert resp.status == 409
    assert ws in (await resp.json())["error"]

    resp = await client.post("/api/workspaces", json={"codebases": []})
    assert resp.status == 400
    assert "title" in (await resp.json())["error"]

    for bad in ({"title": "   "}, {"title": "x" * 201}, {"title": 5}):
        resp = await client.post("/api/workspaces", json=bad)
        assert resp.status == 400, bad
        assert "title" in (await resp.json())["error"]

    resp = await client.post(
        "/api/workspaces", json={"title": "t", "codebases": [{"id": "a"}]}
    )
    assert resp.status == 400
    assert "codebases[0].repoPath" in (await resp.json())["error"]

    resp = await client.post(
        "/api/workspaces",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 400

    resp = await client.patch(f"/api/workspaces/{ws}", json={"status": "gone"})
    assert resp.status == 400
    assert "status" in (await resp.json())["error"]

    missing = f"nope-{uuid.uuid4().hex[:6]}"
    for method in ("GET", "PATCH", "DELETE"):
        resp = await client.request(
            method, f"/api/workspaces/{missing}", json={"title": "x"}
        )
        assert resp.status == 404, method
        assert (await resp.json())["error"] == f"Unknown workspace: {missing}"


async def test_default_cannot_be_deleted(client) -> None:
    resp = await client.delete("/api/workspaces/default")
    assert resp.status == 409
    assert "default" in (await resp.json())["error"]
    resp = await client.get("/api/workspaces/default")
    assert resp.status == 200


async def test_delete_cascades_and_stops_owned_agents(
    client, pool, redis, channels, workspace_id
) -> None:
    owned = uuid.uuid4()
    lapsed = uuid.uuid4()
    unowned = uuid.uuid4()
    async with pool.acquire() as conn:
        for sid, owner, ttl in (
            (owned, "gw-owner-1", 60.0),
            (lapsed, "gw-owner-2", -60.0),  # lease already expired: nobody to stop
            (unowned, None, 15.0),
        ):
            await sessions_db.insert(
                conn,
                sessions_db.NewSession(
                    session_id=sid,
                    workspace_id=workspace_id,
                    cwd="/tmp",
                    provider="echo",
                    owner_instance_id=owner,
                    lease_ttl=ttl,
                ),
            )
        await conn.execute(
            "INSERT INTO session_events (session_id, event_id, kind, payload) VALUES ($1, 1, 'x', '{}')",
            owned,
        )
    resp = await client.post(
        "/api/notes", json={"workspaceId": workspace_id, "title": "n"}
    )
    assert resp.status == 201
    resp = await client.post(
        "/api/tasks",
        json={"title": "t", "objective": "o", "workspaceId": workspace_id},
    )
    assert resp.status == 201
    task_id = (await resp.json())["task"]["id"]

    pubsub = redis.pubsub()
    await pubsub.subscribe(
        channels.gateway_control("gw-owner-1"),
        channels.gateway_control("gw-owner-2"),
        channels.workspace_sessions(workspace_id),
    )
    try:
        resp = await client.delete(f"/api/workspaces/{workspace_id}")
        assert resp.status == 200
        assert await resp.json() == {"ok": True}

        controls: list[tuple[str, dict]] = []
        lifecycle: list[dict] = []
        async with asyncio.timeout(5):
            while len(lifecycle) < 3:
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if msg is None:
                    continue
                body = orjson.loads(msg["data"])
                channel = msg["channel"].decode()
                if channel == channels.workspace_sessions(workspace_id):
                    lifecycle.append(body)
                else:
                    controls.append((channel, body))
    finally:
        await pubsub.aclose()

    # the stop for the live owner was published before the lifecycle messages
    assert controls == [
        (
            channels.gateway_control("gw-owner-1"),
            {"type": "stop", "sessionId": str(owned), "reason": "deleted"},
        )
    ]
    assert sorted(m["sessionId"] for m in lifecycle) == sorted(
        str(s) for s in (owned, lapsed, unowned)
    )
    for m in lifecycle:
        assert m["type"] == "session:deleted"
        assert m["workspaceId"] == workspace_id
        assert m["changes"] == {}

    for table in ("sessions", "notes", "tasks", "codebases"):
        count = await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE workspace_id = $1", workspace_id
        )
        assert count == 0, table
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1", owned
        )
        == 0
    )

    # afterwards every route naming the workspace answers 404
    unknown = f"Unknown workspace: {workspace_id}"
    for method, path, body in (
        ("GET", f"/api/workspaces/{workspace_id}", None),
        ("DELETE", f"/api/workspaces/{workspace_id}", None),
        ("GET", f"/api/notes?workspaceId={workspace_id}", None),
        ("POST", "/api/notes", {"workspaceId": workspace_id, "title": "x"}),
        ("GET", f"/api/tasks?workspaceId={workspace_id}", None),
        ("GET", f"/api/tasks/ready?workspaceId={workspace_id}", None),
        (
            "POST",
            "/api/tasks",
            {"title": "t", "objective": "o", "workspaceId": workspace_id},
        ),
        ("GET", f"/api/notes/events?workspaceId={workspace_id}", None),
    ):
        resp = await client.request(method, path, json=body)
        assert resp.status == 404, (method, path)
        assert (await resp.json())["error"] == unknown
    resp = await client.get(f"/api/tasks/{task_id}")
    assert resp.status == 404


async def test_max_concurrent_turns(client, pool) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    resp = await client.post("/api/workspaces", json={"id": ws, "title": "capped"})
    created = (await resp.json())["workspace"]
    # unset: unlimited, and absent from the object
    assert "maxConcurrentTurns" not in created
    for bad in (0, -1, 1.5, "2", True, 100_001):
        resp = await client.post(
            "/api/workspaces", json={"title": "x", "maxConcurrentTurns": bad}
        )
        assert resp.status == 400, bad
        assert "maxConcurrentTurns" in (await resp.json())["error"]
        resp = await client.patch(
            f"/api/workspaces/{ws}", json={"maxConcurrentTurns": bad}
        )
        assert resp.status == 400, bad
        assert "maxConcurrentTurns" in (await resp.json())["error"]
    resp = await client.patch(f"/api/workspaces/{ws}", json={"maxConcurrentTurns": 3})
    assert resp.status == 200
    assert (await resp.json())["workspace"]["maxConcurrentTurns"] == 3
    # another field alone leaves it; null removes it
    resp = await client.patch(f"/api/workspaces/{ws}", json={"title": "renamed"})
    assert (await resp.json())["workspace"]["maxConcurrentTurns"] == 3
    stored = await pool.fetchval(
        "SELECT max_concurrent_turns FROM workspaces WHERE id = $1", ws
    )
    assert stored == 3
    resp = await client.patch(
        f"/api/workspaces/{ws}", json={"maxConcurrentTurns": None}
    )
    assert "maxConcurrentTurns" not in (await resp.json())["workspace"]
    resp = await client.get(f"/api/workspaces/{ws}")
    assert "maxConcurrentTurns" not in (await resp.json())["workspace"]
    # given at creation
    other = f"ws-{uuid.uuid4().hex[:8]}"
    resp = await client.post(
        "/api/workspaces", json={"id": other, "title": "t", "maxConcurrentTurns": 1}
    )
    assert resp.status == 201
    assert (await resp.json())["workspace"]["maxConcurrentTurns"] == 1
    # unknown workspace
    resp = await client.patch(
        "/api/workspaces/ws-nope-nope", json={"maxConcurrentTurns": 2}
    )
    assert resp.status == 404
