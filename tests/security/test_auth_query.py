"""Auth on the query service: 401 / 403 / 200 per route family, scoped lists, SSE."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.query.app import create_app
from tests.security.conftest import TOKEN_A, TOKEN_ALL, TOKEN_B, bearer, insert_session


@pytest.fixture
async def query(make_settings, auth_tokens, aiohttp_client):
    return await aiohttp_client(create_app(make_settings(auth_tokens=auth_tokens)))


async def status(client, method, path, token=None, **kw) -> int:
    headers = bearer(token) if token else {}
    async with client.request(method, path, headers=headers, **kw) as resp:
        body = await resp.read()
        if resp.status >= 400:
            assert set(orjson.loads(body)) == {"error"}, body
        return resp.status


async def test_open_routes_need_no_token(query) -> None:
    for path in ("/healthz", "/metrics", "/", "/static/app.js"):
        assert await status(query, "GET", path) == 200, path


async def test_every_route_family_401_403_200(query, pool, two_workspaces) -> None:
    ws_a, ws_b = two_workspaces
    sid_a = await insert_session(pool, ws_a)
    sid_b = await insert_session(pool, ws_b)
    # every family without a token, and with an unknown one
    for path in (
        "/api/sessions",
        f"/api/sessions/{sid_a}",
        f"/api/notes?workspaceId={ws_a}",
        f"/api/tasks?workspaceId={ws_a}",
        "/api/workspaces",
        f"/api/workspaces/{ws_a}",
        "/api/nothing-here",
    ):
        assert await status(query, "GET", path) == 401, path
        assert await status(query, "GET", path, "wrong") == 401, path
    # inside the scope
    for path in (
        f"/api/sessions/{sid_a}",
        f"/api/sessions/{sid_a}/history",
        f"/api/sessions/{sid_a}/context",
        f"/api/notes?workspaceId={ws_a}",
        f"/api/tasks?workspaceId={ws_a}",
        f"/api/tasks/ready?workspaceId={ws_a}",
        f"/api/workspaces/{ws_a}",
    ):
        assert await status(query, "GET", path, TOKEN_A) == 200, path
    # outside it: 403 whether the target exists or not (nothing is revealed)
    for method, path in (
        ("GET", f"/api/sessions?workspaceId={ws_b}"),
        ("GET", f"/api/sessions/{sid_b}"),
        ("GET", f"/api/sessions/{sid_b}/history"),
        ("PATCH", f"/api/sessions/{sid_b}"),
        ("DELETE", f"/api/sessions/{sid_b}"),
        ("POST", f"/api/sessions/{sid_b}/fork"),
        ("GET", f"/api/notes?workspaceId={ws_b}"),
        ("GET", "/api/notes?workspaceId=no-such-workspace"),
        ("GET", f"/api/tasks?workspaceId={ws_b}"),
        ("GET", f"/api/workspaces/{ws_b}"),
        ("DELETE", f"/api/workspaces/{ws_b}"),
        ("GET", "/api/workspaces/no-such-workspace"),
    ):
        assert await status(query, method, path, TOKEN_A) == 403, (method, path)
    # bodies naming another workspace
    assert (
        await status(query, "POST", "/api/notes", TOKEN_A, json={"workspaceId": ws_b})
        == 403
    )
    task = {"title": "t", "objective": "o", "workspaceId": ws_b}
    assert await status(query, "POST", "/api/tasks", TOKEN_A, json=task) == 403
    assert (
        await status(query, "POST", "/api/workspaces", TOKEN_A, json={"title": "x"})
        == 403
    )
    # a task of workspace b, by id
    async with query.post("/api/tasks", json=task, headers=bearer(TOKEN_B)) as resp:
        assert resp.status == 201
        task_id = (await resp.json())["task"]["id"]
    assert await status(query, "GET", f"/api/tasks/{task_id}", TOKEN_A) == 403
    assert await status(query, "DELETE", f"/api/tasks?taskId={task_id}", TOKEN_A) == 403
    assert await status(query, "GET", f"/api/tasks/{task_id}", TOKEN_B) == 200
    # the session of b is untouched, and unknown ids stay 404
    assert await status(query, "GET", f"/api/sessions/{sid_b}", TOKEN_ALL) == 200
    unknown = "00000000-0000-4000-8000-000000000000"
    assert await status(query, "GET", f"/api/sessions/{unknown}", TOKEN_A) == 404


async def test_lists_are_filtered_to_the_scope(query, pool, two_workspaces) -> None:
    ws_a, ws_b = two_workspaces
    sid_a = await insert_session(pool, ws_a)
    sid_b = await insert_session(pool, ws_b)
    async with query.get("/api/sessions", headers=bearer(TOKEN_A)) as resp:
        ids = {s["sessionId"] for s in (await resp.json())["sessions"]}
    assert sid_a in ids
    assert sid_b not in ids
    assert all(
        s["workspaceId"] == ws_a
        for s in (
            await (await query.get("/api/sessions", headers=bearer(TOKEN_A))).json()
        )["sessions"]
    )
    async with query.get(f"/api/sessions?access_token={TOKEN_ALL}") as resp:
        ids = {s["sessionId"] for s in (await resp.json())["sessions"]}
    assert {sid_a, sid_b} <= ids
    async with query.get("/api/workspaces", headers=bearer(TOKEN_B)) as resp:
        assert [w["id"] for w in (await resp.json())["workspaces"]] == [ws_b]


async def test_lifecycle_sse_without_workspace_carries_only_the_scope(
    query, redis, channels, two_workspaces
) -> None:
    ws_a, ws_b = two_workspaces
    async with query.get(f"/api/sessions/events?access_token={TOKEN_A}") as resp:
        assert resp.status == 200

        async def next_data() -> dict:
            while True:
                line = await resp.content.readline()
                if line.startswith(b"data: "):
                    return orjson.loads(line[6:])

        async with asyncio.timeout(10):
            assert (await next_data())["type"] == "connected"
            for ws in (ws_b, ws_a):
                message = {
                    "type": "session:deleted",
                    "sessionId": ws,
                    "workspaceId": ws,
                }
                await redis.publish(
                    channels.workspace_sessions(ws), orjson.dumps(message)
                )
            # b's message went first; the first one this stream sees is a's
            assert (await next_data())["workspaceId"] == ws_a
