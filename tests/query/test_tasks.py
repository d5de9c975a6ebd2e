"""/api/tasks: create/read/update/delete, status <-> column, ready tasks, Redis messages."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from tests.query.ntw_support import next_data, query_client


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await query_client(aiohttp_client, make_settings)


async def _task(client, workspace_id: str, **fields) -> dict:
    body = {"title": "T", "objective": "O", "workspaceId": workspace_id, **fields}
    resp = await client.post("/api/tasks", json=body)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["task"]


async def test_create_defaults_and_roundtrip(client, workspace_id) -> None:
    task = await _task(client, workspace_id, title="  Build it  ")
    assert task["title"] == "Build it"
    assert task["objective"] == "O"
    assert task["status"] == "PENDING"
    assert task["columnId"] == "backlog"
    assert task["position"] == 0
    assert task["creationSource"] == "user"
    for name in (
        "labels",
        "dependencies",
        "acceptanceCriteria",
        "verificationCommands",
        "comments",
    ):
        assert task[name] == [], name
    for name in ("priority", "sessionId", "assignedTo"):
        assert name not in task, name
    assert str(uuid.UUID(task["id"])) == task["id"]
    assert task["createdAt"].endswith("Z")

    weird = "Ünïcode ✓ '; DROP TABLE tasks; --" + "y" * 3000
    full = await _task(
        client,
        workspace_id,
        id="task-given",
        objective=weird,
        priority="urgent",
        sessionId="s1",
        assignedTo="agent-7",
        labels=["a", "b"],
        dependencies=["x"],
        acceptanceCriteria=["works"],
        verificationCommands=["pytest"],
        comments=["plain", {"author": "me", "text": "obj"}],
        position=3,
        creationSource="agent",
        status="in_progress",
    )
    assert full["id"] == "task-given"
    assert full["objective"] == weird
    assert full["status"] == "IN_PROGRESS"
    assert full["columnId"] == "dev"
    assert full["comments"] == ["plain", {"author": "me", "text": "obj"}]
    assert full["priority"] == "urgent"
    assert full["creationSource"] == "agent"

    resp = await client.get("/api/tasks/task-given")
    assert resp.status == 200
    assert (await resp.json())["task"] == full

    resp = await client.post(
        "/api/tasks",
        json={
            "id": "task-given",
            "title": "t",
            "objective": "o",
            "workspaceId": workspace_id,
        },
    )
    assert resp.status == 409


async def test_create_errors_in_order(client, workspace_id) -> None:
    cases = [
        ({}, "title is required"),
        ({"objective": "o", "workspaceId": workspace_id}, "title is required"),
        ({"title": "   ", "objective": "o"}, "title is required"),
        ({"title": "t", "workspaceId": workspace_id}, "objective is required"),
        ({"title": "t", "objective": "o"}, "workspaceId is required"),
    ]
    for body, message in cases:
        resp = await client.post("/api/tasks", json=body)
        assert resp.status == 400, body
        assert (await resp.json())["error"] == message, body

    base = {"title": "t", "objective": "o", "workspaceId": workspace_id}
    for extra, field in (
        ({"priority": "asap"}, "priority"),
        ({"status": "DONE"}, "status"),
        ({"columnId": "nowhere"}, "columnId"),
        ({"labels": "not-a-list"}, "labels"),
        ({"title": "x" * 201}, "title"),
        ({"position": "first"}, "position"),
    ):
        resp = await client.post("/api/tasks", json={**base, **extra})
        assert resp.status == 400, extra
        assert field in (await resp.json())["error"], extra
    resp = await client.post("/api/tasks", json={**base, "priority": "asap"})
    assert (await resp.json())["error"] == "Invalid priority: asap"

    resp = await client.post("/api/tasks", json={**base, "workspaceId": "nope-t"})
    assert resp.status == 404
    assert (await resp.json())["error"] == "Unknown workspace: nope-t"


async def test_list_filters(client, workspace_id) -> None:
    a = await _task(client, workspace_id, sessionId="s1", assignedTo="bob")
    b = await _task(client, workspace_id, status="COMPLETED")
    c = await _task(client, workspace_id, sessionId="s1", status="blocked")

    async def ids(query: str) -> list[str]:
        resp = await client.get(f"/api/tasks?workspaceId={workspace_id}{query}")
        assert resp.status == 200, await resp.text()
        return [t["id"] for t in (await resp.json())["tasks"]]

    assert await ids("") == [c["id"], b["id"], a["id"]]
    assert await ids("&sessionId=s1") == [c["id"], a["id"]]
    assert await ids("&status=completed") == [b["id"]]
    assert await ids("&status=Blocked&sessionId=s1") == [c["id"]]
    assert await ids("&assignedTo=bob") == [a["id"]]
    assert await ids("&sessionId=no-such-session") == []

    resp = await client.get(f"/api/tasks?workspaceId={workspace_id}&status=x")
    assert resp.status == 400
    assert (await resp.json())["error"] == "Invalid status: x"
    resp = await client.get("/api/tasks")
    assert resp.status == 400
    assert (await resp.json())["error"] == "workspaceId is required"
    resp = await client.get("/api/tasks?workspaceId=nope-l")
    assert resp.status == 404
    assert (await resp.json())["error"] == "Unknown workspace: nope-l"


@pytest.mark.parametrize(
    ("status", "column"),
    [
        ("PENDING", "backlog"),
        ("in_progress", "dev"),
        ("Review_Required", "review"),
        ("BLOCKED", "blocked"),
        ("completed", "done"),
        ("NEEDS_FIX", "dev"),
        ("cancelled", "done"),
    ],
)
async def test_status_sets_column(client, workspace_id, status, column) -> None:
    task = await _task(client, workspace_id)
    resp = await client.post(f"/api/tasks/{task['id']}/status", json={"status": status})
    assert resp.status == 200
    updated = (await resp.json())["task"]
    assert updated["status"] == status.upper()
    assert updated["columnId"] == column

    resp = await client.patch(f"/api/tasks/{task['id']}", json={"status": "pending"})
    assert (await resp.json())["task"]["columnId"] == "backlog"


@pytest.mark.parametrize(
    ("column", "status"),
    [
        ("backlog", "PENDING"),
        ("dev", "IN_PROGRESS"),
        ("review", "REVIEW_REQUIRED"),
        ("blocked", "BLOCKED"),
        ("done", "COMPLETED"),
    ],
)
async def test_column_sets_status(client, workspace_id, column, status) -> None:
    task = await _task(client, workspace_id, status="BLOCKED")
    resp = await client.patch(f"/api/tasks/{task['id']}", json={"columnId": column})
    assert resp.status == 200
    updated = (await resp.json())["task"]
    assert updated["columnId"] == column
    assert updated["status"] == status


async def test_patch_and_status_errors(client, workspace_id) -> None:
    task = await _task(client, workspace_id, priority="low", assignedTo="bob")
    resp = await client.patch(
        f"/api/tasks/{task['id']}",
        json={
            "title": " New ",
            "labels": ["x"],
            "comments": [{"a": 1}],
            "priority": None,
        },
    )
    assert resp.status == 200
    updated = (await resp.json())["task"]
    assert updated["title"] == "New"
    assert updated["labels"] == ["x"]
    assert updated["comments"] == [{"a": 1}]
    assert "priority" not in updated  # null clears it
    assert updated["assignedTo"] == "bob"  # not sent: unchanged
    assert updated["objective"] == "O"

    for body, field in (
        ({"priority": "later"}, "priority"),
        ({"title": ""}, "title"),
        ({"title": None}, "title"),
        ({"status": "nope"}, "status"),
        ({"columnId": "x"}, "columnId"),
    ):
        resp = await client.patch(f"/api/tasks/{task['id']}", json=body)
        assert resp.status == 400, body
        assert field in (await resp.json())["error"], body

    resp = await client.post(f"/api/tasks/{task['id']}/status", json={"status": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "Invalid status: x"
    resp = await client.post(f"/api/tasks/{task['id']}/status", json={})
    assert resp.status == 400
    assert "status" in (await resp.json())["error"]

    payload: dict | None
    for method, path, payload in (
        ("GET", "/api/tasks/missing", None),
        ("PATCH", "/api/tasks/missing", {"title": "x"}),
        ("DELETE", "/api/tasks/missing", None),
        ("POST", "/api/tasks/missing/status", {"status": "PENDING"}),
        ("DELETE", "/api/tasks?taskId=missing", None),
    ):
        resp = await client.request(method, path, json=payload)
        assert resp.status == 404, (method, path)
        assert "missing" in (await resp.json())["error"]


async def test_delete(client, workspace_id) -> None:
    a = await _task(client, workspace_id)
    b = await _task(client, workspace_id)
    resp = await client.delete(f"/api/tasks/{a['id']}")
    assert resp.status == 200
    assert await resp.json() == {"deleted": True, "taskId": a["id"]}
    resp = await client.delete(f"/api/tasks?taskId={b['id']}")
    assert resp.status == 200
    assert await resp.json() == {"deleted": True, "taskId": b["id"]}

    c = await _task(client, workspace_id)
    resp = await client.delete(f"/api/tasks?workspaceId={workspace_id}")
    assert resp.status == 400
    assert "taskId" in (await resp.json())["error"]
    resp = await client.get(f"/api/tasks?workspaceId={workspace_id}")
    assert [t["id"] for t in (await resp.json())["tasks"]] == [c["id"]]
    resp = await client.delete("/api/tasks")
    assert resp.status == 400


async def test_ready(client, workspace_id) -> None:
    done = await _task(client, workspace_id, status="COMPLETED")
    running = await _task(client, workspace_id, status="IN_PROGRESS")
    free = await _task(client, workspace_id)
    after_done = await _task(client, workspace_id, dependencies=[done["id"]])
    after_running = await _task(
        client, workspace_id, dependencies=[done["id"], running["id"]]
    )
    await _task(client, workspace_id, dependencies=["no-such-task"])
    await _task(client, workspace_id, status="BLOCKED")

    resp = await client.get(f"/api/tasks/ready?workspaceId={workspace_id}")
    assert resp.status == 200
    ready = {t["id"] for t in (await resp.json())["tasks"]}
    assert ready == {free["id"], after_done["id"]}

    await client.post(
        f"/api/tasks/{running['id']}/status", json={"status": "completed"}
    )
    resp = await client.get(f"/api/tasks/ready?workspaceId={workspace_id}")
    ready = {t["id"] for t in (await resp.json())["tasks"]}
    assert ready == {free["id"], after_done["id"], after_running["id"]}

    resp = await client.get("/api/tasks/ready")
    assert resp.status == 400
    resp = await client.get("/api/tasks/ready?workspaceId=nope-r")
    assert resp.status == 404


async def test_messages(client, redis, channels, workspace_id) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.workspace_tasks(workspace_id))
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    try:
        task = await _task(client, workspace_id)
        await client.patch(f"/api/tasks/{task['id']}", json={"columnId": "review"})
        await client.delete(f"/api/tasks/{task['id']}")
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
        "task:created",
        "task:updated",
        "task:deleted",
    ]
    for m in messages:
        assert m["taskId"] == task["id"]
        assert m["workspaceId"] == workspace_id
        assert m["at"].endswith("Z")
    assert messages[0]["task"] == task
    assert messages[1]["task"]["status"] == "REVIEW_REQUIRED"
    assert "task" not in messages[2]


async def test_concurrent_patches_keep_both_fields(client, workspace_id) -> None:
    task = await _task(client, workspace_id)
    responses = await asyncio.gather(
        *(
            client.patch(f"/api/tasks/{task['id']}", json={field: value})
            for field, value in (
                ("labels", ["l"]),
                ("assignedTo", "amy"),
                ("priority", "high"),
            )
        )
    )
    assert [r.status for r in responses] == [200, 200, 200]
    resp = await client.get(f"/api/tasks/{task['id']}")
    final = (await resp.json())["task"]
    assert final["labels"] == ["l"]
    assert final["assignedTo"] == "amy"
    assert final["priority"] == "high"


async def test_task_events_stream(aiohttp_client, make_settings, workspace_id) -> None:
    """Task changes made on another instance arrive on the tasks stream (an extra of ours)."""
    a = await query_client(aiohttp_client, make_settings)
    b = await query_client(aiohttp_client, make_settings)
    resp = await a.get(f"/api/tasks/events?workspaceId={workspace_id}")
    assert resp.status == 200
    assert (await next_data(resp))["type"] == "connected"
    task = await _task(b, workspace_id)
    message = await next_data(resp)
    assert message["type"] == "task:created"
    assert message["task"] == task
    resp.close()
