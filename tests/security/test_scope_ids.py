"""Ids that name another object stay inside the caller's workspace (issue 12, defect 6).

A parent session, a note's or task's `sessionId` and a task dependency must name an object
of the same workspace, or they count as unknown (404 / -32004); a snake_case spelling of a
parameter is an unknown key, so it can never carry an id past the scope check.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.common.keys import HUB
from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from shared.db import sessions
from tests.security.conftest import TOKEN_A, TOKEN_ALL, TOKEN_B, bearer

SECRET = "B-SECRET-NAME"


async def named_session(pool, workspace_id: str, name: str, parent=None) -> str:
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid,
                workspace_id=workspace_id,
                cwd="/tmp",
                provider="echo",
                name=name,
                parent_session_id=uuid.UUID(parent) if parent else None,
                acp_status="closed",
                status="closed",
            ),
        )
    return str(sid)


@pytest.fixture
async def query(make_settings, auth_tokens, aiohttp_client):
    return await aiohttp_client(create_query(make_settings(auth_tokens=auth_tokens)))


@pytest.fixture
async def gateway(make_settings, auth_tokens, aiohttp_client, cwd_root):
    client = await aiohttp_client(
        create_gateway(make_settings(auth_tokens=auth_tokens))
    )
    async with asyncio.timeout(10):
        await client.app[HUB].connected.wait()
    return client


async def call(gw, token: str, method: str, params: dict):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return await gw.post("/api/acp", json=body, headers=bearer(token))


async def rpc(gw, token: str, method: str, params: dict) -> dict:
    resp = await call(gw, token, method, params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def context_text(query, token: str, sid: str) -> str:
    resp = await query.get(f"/api/sessions/{sid}/context", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def test_parent_session_must_be_of_the_same_workspace(
    gateway, query, pool, two_workspaces
):
    ws_a, ws_b = two_workspaces
    sid_b = await named_session(pool, ws_b, SECRET)
    sid_a = await named_session(pool, ws_a, "A-parent")

    # snake_case is an unknown key: ignored, so no parent (it used to become B's session)
    body = await rpc(
        gateway,
        TOKEN_A,
        "session/new",
        {"workspaceId": ws_a, "parent_session_id": sid_b},
    )
    child = body["result"]["sessionId"]
    parent = await pool.fetchval(
        "SELECT parent_session_id FROM sessions WHERE session_id = $1",
        uuid.UUID(child),
    )
    assert parent is None
    assert SECRET not in await context_text(query, TOKEN_A, child)

    # camelCase from a token scoped to wsA: the transport check refuses it (403)
    resp = await call(
        gateway, TOKEN_A, "session/new", {"workspaceId": ws_a, "parentSessionId": sid_b}
    )
    assert resp.status == 403
    # a token for every workspace still cannot link across them: as if unknown
    body = await rpc(
        gateway,
        TOKEN_ALL,
        "session/new",
        {"workspaceId": ws_a, "parentSessionId": sid_b},
    )
    assert body["error"]["code"] == -32004
    assert body["error"]["message"] == f"Session not found: {sid_b}"
    unknown = str(uuid.uuid4())
    body = await rpc(
        gateway,
        TOKEN_ALL,
        "session/new",
        {"workspaceId": ws_a, "parentSessionId": unknown},
    )
    assert body["error"] == {"code": -32004, "message": f"Session not found: {unknown}"}
    n_sessions = await pool.fetchval(
        "SELECT count(*) FROM sessions WHERE workspace_id = $1", ws_a
    )
    assert (
        n_sessions == 2
    )  # A-parent and the child above: the refused ones wrote nothing

    # the same workspace works, and /context shows that parent
    body = await rpc(
        gateway, TOKEN_A, "session/new", {"workspaceId": ws_a, "parentSessionId": sid_a}
    )
    linked = body["result"]["sessionId"]
    assert "A-parent" in await context_text(query, TOKEN_A, linked)


async def test_snake_case_params_are_unknown_keys(gateway, pool, two_workspaces):
    ws_a, _ = two_workspaces
    sid_a = await named_session(pool, ws_a, "mine")
    body = await rpc(gateway, TOKEN_A, "session/cancel", {"session_id": sid_a})
    assert body["error"]["code"] == -32602
    assert "sessionId is required" in body["error"]["message"]
    body = await rpc(
        gateway, TOKEN_A, "session/set_mode", {"sessionId": sid_a, "mode_id": "plan"}
    )
    assert body["error"]["code"] == -32602
    assert "modeId is required" in body["error"]["message"]


async def test_context_never_shows_another_workspaces_family(
    query, pool, two_workspaces
):
    ws_a, ws_b = two_workspaces
    # rows written before parents were checked: a wsA session whose parent is in wsB
    sid_b = await named_session(pool, ws_b, SECRET)
    sid_a = await named_session(pool, ws_a, "A-SECRET-CHILD", parent=sid_b)
    text_a = await context_text(query, TOKEN_A, sid_a)
    assert SECRET not in text_a
    assert sid_b not in text_a
    text_b = await context_text(query, TOKEN_B, sid_b)
    assert "A-SECRET-CHILD" not in text_b
    assert sid_a not in text_b


async def test_note_session_id_of_another_workspace(query, pool, two_workspaces):
    ws_a, ws_b = two_workspaces
    sid_b = await named_session(pool, ws_b, SECRET)
    sid_a = await named_session(pool, ws_a, "A-session")
    for token in (TOKEN_A, TOKEN_ALL):
        resp = await query.post(
            "/api/notes",
            json={"workspaceId": ws_a, "title": "x", "sessionId": sid_b},
            headers=bearer(token),
        )
        assert resp.status == 404
        assert await resp.json() == {"error": f"Session not found: {sid_b}"}
    # an own session, a free-form string and an unknown uuid are all fine
    for session_id in (sid_a, "s-1", str(uuid.uuid4())):
        resp = await query.post(
            "/api/notes",
            json={"workspaceId": ws_a, "title": "ok", "sessionId": session_id},
            headers=bearer(TOKEN_A),
        )
        assert resp.status == 201, await resp.text()
    note = (await resp.json())["note"]
    # an update cannot move the note onto B's session either
    resp = await query.post(
        "/api/notes",
        json={"workspaceId": ws_a, "noteId": note["id"], "sessionId": sid_b},
        headers=bearer(TOKEN_A),
    )
    assert resp.status == 404
    # snake_case is an unknown key: ignored
    resp = await query.post(
        "/api/notes",
        json={"workspaceId": ws_a, "title": "snake", "session_id": sid_b},
        headers=bearer(TOKEN_A),
    )
    assert resp.status == 201
    assert "sessionId" not in (await resp.json())["note"]
    assert not await pool.fetchval(
        "SELECT count(*) FROM notes WHERE workspace_id = $1 AND session_id = $2",
        ws_a,
        sid_b,
    )

    # a note written before the check: groupBy=session never shows B's name
    await pool.execute(
        "INSERT INTO notes (workspace_id, id, title, session_id) VALUES ($1, $2, 'old', $3)",
        ws_a,
        "legacy-note",
        sid_b,
    )
    resp = await query.get(
        f"/api/notes?workspaceId={ws_a}&groupBy=session", headers=bearer(TOKEN_A)
    )
    assert resp.status == 200
    text = await resp.text()
    assert SECRET not in text
    groups = (await resp.json())["groups"]
    legacy = next(g for g in groups if g.get("sessionId") == sid_b)
    assert legacy["sessionName"] == sid_b  # the id, as for an unknown session
    own = next(g for g in groups if g.get("sessionId") == sid_a)
    assert own["sessionName"] == "A-session"


async def test_task_session_id_and_dependencies_of_another_workspace(
    query, pool, two_workspaces
):
    ws_a, ws_b = two_workspaces
    sid_b = await named_session(pool, ws_b, SECRET)
    sid_a = await named_session(pool, ws_a, "A-session")
    task = {"workspaceId": ws_a, "title": "t", "objective": "o"}
    resp = await query.post(
        "/api/tasks", json={**task, "sessionId": sid_b}, headers=bearer(TOKEN_ALL)
    )
    assert resp.status == 404
    assert await resp.json() == {"error": f"Session not found: {sid_b}"}
    resp = await query.post(
        "/api/tasks", json={**task, "sessionId": sid_a}, headers=bearer(TOKEN_A)
    )
    assert resp.status == 201
    task_id = (await resp.json())["task"]["id"]
    resp = await query.patch(
        f"/api/tasks/{task_id}", json={"sessionId": sid_b}, headers=bearer(TOKEN_A)
    )
    assert resp.status == 404
    assert await resp.json() == {"error": f"Session not found: {sid_b}"}
    stored = await pool.fetchval("SELECT session_id FROM tasks WHERE id = $1", task_id)
    assert stored == sid_a
    resp = await query.patch(
        f"/api/tasks/{task_id}", json={"sessionId": None}, headers=bearer(TOKEN_A)
    )
    assert resp.status == 200

    # a wsA task that depends on a completed wsB task is not ready: the dependency
    # counts as unknown, so B's task status does not leak into A's ready list
    resp = await query.post(
        "/api/tasks",
        json={
            "workspaceId": ws_b,
            "title": "b",
            "objective": "o",
            "status": "COMPLETED",
        },
        headers=bearer(TOKEN_B),
    )
    b_task = (await resp.json())["task"]["id"]
    resp = await query.post(
        "/api/tasks", json={**task, "dependencies": [b_task]}, headers=bearer(TOKEN_A)
    )
    waiting = (await resp.json())["task"]["id"]
    resp = await query.get(
        f"/api/tasks/ready?workspaceId={ws_a}", headers=bearer(TOKEN_A)
    )
    assert waiting not in [t["id"] for t in (await resp.json())["tasks"]]
