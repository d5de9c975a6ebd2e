"""Session routes of the query service against real Postgres and Redis."""

from __future__ import annotations

import uuid

import pytest

from shared.db import session_events
from tests.query.sessions_support import (
    ISO_MS,
    Listener,
    add_events,
    chunk,
    list_json,
    make_session,
    session_client,
)


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await session_client(aiohttp_client, make_settings)


# --- GET /api/sessions ------------------------------------------------------------------


async def test_list_has_the_seed_shape_newest_first(client, pool, workspace_id):
    first = await make_session(pool, workspace_id, name="Documentation Updates")
    second = await make_session(pool, workspace_id, name="Feature Development")
    resp = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.content_type == "application/json"
    sessions = (await resp.json())["sessions"]
    assert [s["sessionId"] for s in sessions] == [second, first]
    for s in sessions:
        assert {
            "sessionId",
            "name",
            "workspaceId",
            "createdAt",
            "lastActivity",
            "status",
        } <= s.keys()
        assert s["workspaceId"] == workspace_id
        assert ISO_MS.match(s["createdAt"])
        assert ISO_MS.match(s["lastActivity"])
        assert s["status"] == "closed"
        # optional fields without a value are absent, never null
        assert None not in s.values()
        assert "branch" not in s
        assert "ownerInstanceId" not in s
    assert sessions[0]["name"] == "Feature Development"


async def test_list_filters(client, pool, workspace_id):
    parent = await make_session(pool, workspace_id, name="parent")
    child = await make_session(
        pool, workspace_id, name="child", parent_session_id=uuid.UUID(parent)
    )
    live = await make_session(
        pool,
        workspace_id,
        name="live",
        acp_status="ready",
        status="idle",
        owner_instance_id="gw-live",
    )
    # status idle without a live owner lease is not idle: no live agent process
    await make_session(
        pool, workspace_id, name="orphan", acp_status="ready", status="idle"
    )

    idle = await list_json(client, workspaceId=workspace_id, status="idle")
    assert [s["sessionId"] for s in idle] == [live]
    assert idle[0]["ownerInstanceId"] == "gw-live"
    closed = await list_json(client, workspaceId=workspace_id, status="closed")
    assert live not in {s["sessionId"] for s in closed}
    assert len(closed) == 3
    assert await list_json(client, workspaceId=workspace_id, status="active") == []

    children = await list_json(client, parentSessionId=parent)
    assert [s["sessionId"] for s in children] == [child]
    assert children[0]["parentSessionId"] == parent
    assert await list_json(client, parentSessionId="not-a-uuid") == []

    limited = await list_json(client, workspaceId=workspace_id, limit="2")
    assert len(limited) == 2
    assert len(await list_json(client, workspaceId=workspace_id, limit="1000")) == 4
    # unknown parameters are ignored
    assert len(await list_json(client, workspaceId=workspace_id, foo="bar")) == 4
    assert await list_json(client, workspaceId=f"{workspace_id}-none") == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "x"}, "Invalid status: x"),
        ({"status": "open"}, "Invalid status: open"),
        ({"limit": "0"}, "Invalid limit: 0"),
        ({"limit": "1001"}, "Invalid limit: 1001"),
        ({"limit": "-1"}, "Invalid limit: -1"),
        ({"limit": "ten"}, "Invalid limit: ten"),
    ],
)
async def test_list_rejects_bad_filters(client, params, message):
    resp = await client.get("/api/sessions", params=params)
    assert resp.status == 400
    assert await resp.json() == {"error": message}


# --- GET /api/sessions/{id} -------------------------------------------------------------


async def test_get_session_has_all_fields(client, pool, workspace_id):
    sid = await make_session(
        pool,
        workspace_id,
        name="n",
        branch="main",
        mode_id="chat",
        model="echo-small",
        role="GATE",
    )
    resp = await client.get(f"/api/sessions/{sid}")
    assert resp.status == 200
    session = (await resp.json())["session"]
    assert session["sessionId"] == sid
    assert session["branch"] == "main"
    assert session["modeId"] == "chat"
    assert session["model"] == "echo-small"
    assert session["role"] == "GATE"
    assert session["provider"] == "echo"
    assert session["cwd"] == "/tmp/routa-test"
    assert session["acpStatus"] == "closed"
    assert session["continuityStatus"] in {"restorable", "interrupted"}
    assert set(session["resumeCapabilities"]) == {"supported", "mode"}


@pytest.mark.parametrize("sid", [str(uuid.uuid4()), "session-abc123", "%20"])
async def test_unknown_session_is_404_on_every_route(client, sid):
    for method, suffix in [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/disconnect"),
        ("POST", "/fork"),
        ("GET", "/history"),
        ("GET", "/context"),
    ]:
        kwargs = {"json": {"name": "x"}} if method in ("PATCH", "POST") else {}
        resp = await client.request(method, f"/api/sessions/{sid}{suffix}", **kwargs)
        assert resp.status == 404, (method, suffix)
        assert await resp.json() == {"error": "Session not found"}


# --- PATCH ------------------------------------------------------------------------------


async def test_rename_persists_logs_and_announces(
    client, pool, redis, channels, workspace_id
):
    sid = await make_session(pool, workspace_id, name="old")
    async with Listener(
        redis, channels.session_events(sid), channels.workspace_sessions(workspace_id)
    ) as listener:
        resp = await client.patch(f"/api/sessions/{sid}", json={"name": "  New name  "})
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
        got = dict([await listener.next(), await listener.next()])
    event = got[channels.session_events(sid)]
    assert event["sessionId"] == sid
    assert event["eventId"] == "1"
    assert event["update"] == {"sessionUpdate": "session_renamed", "name": "New name"}
    lifecycle = got[channels.workspace_sessions(workspace_id)]
    assert lifecycle["type"] == "session:updated"
    assert lifecycle["sessionId"] == sid
    assert lifecycle["workspaceId"] == workspace_id
    assert lifecycle["changes"] == {"name": "New name"}
    assert ISO_MS.match(lifecycle["at"])

    session = (await (await client.get(f"/api/sessions/{sid}")).json())["session"]
    assert session["name"] == "New name"
    history = (await (await client.get(f"/api/sessions/{sid}/history")).json())[
        "history"
    ]
    assert history == [event]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": 5},
        {"name": None},
        {"name": "x" * 201},
        [],
    ],
)
async def test_rename_rejects_bad_names(client, pool, workspace_id, body):
    sid = await make_session(pool, workspace_id, name="keep")
    resp = await client.patch(f"/api/sessions/{sid}", json=body)
    assert resp.status == 400
    assert await resp.json() == {"error": "Invalid name"}
    session = (await (await client.get(f"/api/sessions/{sid}")).json())["session"]
    assert session["name"] == "keep"
    async with pool.acquire() as conn:
        assert await session_events.count(conn, uuid.UUID(sid)) == 0


async def test_rename_counts_code_points_and_rejects_bad_json(
    client, pool, workspace_id
):
    sid = await make_session(pool, workspace_id)
    name = "😀" * 200  # 200 code points, 400 UTF-16 units
    resp = await client.patch(f"/api/sessions/{sid}", json={"name": name})
    assert resp.status == 200
    resp = await client.patch(
        f"/api/sessions/{sid}",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert "error" in await resp.json()


# --- DELETE -----------------------------------------------------------------------------


async def test_delete_stops_the_owner_and_announces(
    client, pool, redis, channels, workspace_id
):
    owner = f"gw-{uuid.uuid4().hex[:6]}"
    sid = await make_session(
        pool, workspace_id, acp_status="ready", status="idle", owner_instance_id=owner
    )
    await add_events(pool, sid, [chunk("hi ")])
    async with Listener(
        redis,
        channels.gateway_control(owner),
        channels.workspace_sessions(workspace_id),
    ) as listener:
        resp = await client.delete(f"/api/sessions/{sid}")
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
        got = dict([await listener.next(), await listener.next()])
    assert got[channels.gateway_control(owner)] == {
        "type": "stop",
        "sessionId": sid,
        "reason": "deleted",
    }
    lifecycle = got[channels.workspace_sessions(workspace_id)]
    assert lifecycle["type"] == "session:deleted"
    assert lifecycle["sessionId"] == sid
    assert lifecycle["changes"] == {}

    assert (await client.get(f"/api/sessions/{sid}")).status == 404
    assert (await client.get(f"/api/sessions/{sid}/history")).status == 404
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1", uuid.UUID(sid)
        )
        == 0
    )
    assert sid not in {
        s["sessionId"] for s in await list_json(client, workspaceId=workspace_id)
    }
    assert (await client.delete(f"/api/sessions/{sid}")).status == 404


async def test_delete_without_owner_sends_no_stop(
    client, pool, redis, channels, workspace_id
):
    # a lapsed lease is no owner: nobody is told to stop
    sid = await make_session(
        pool, workspace_id, status="idle", owner_instance_id="gw-dead", lease_ttl=-1
    )
    async with Listener(
        redis,
        channels.gateway_control("gw-dead"),
        channels.workspace_sessions(workspace_id),
    ) as listener:
        assert (await client.delete(f"/api/sessions/{sid}")).status == 200
        channel, message = await listener.next()
    assert channel == channels.workspace_sessions(workspace_id)
    assert message["type"] == "session:deleted"


# --- disconnect -------------------------------------------------------------------------


async def test_disconnect_stops_closes_and_logs_once(
    client, pool, redis, channels, workspace_id
):
    owner = f"gw-{uuid.uuid4().hex[:6]}"
    sid = await make_session(
        pool, workspace_id, acp_status="ready", status="idle", owner_instance_id=owner
    )
    await add_events(pool, sid, [{"sessionUpdate": "acp_status", "status": "ready"}])
    async with Listener(
        redis,
        channels.gateway_control(owner),
        channels.workspace_sessions(workspace_id),
        channels.session_events(sid),
    ) as listener:
        resp = await client.post(f"/api/sessions/{sid}/disconnect")
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
        got = dict(
            [await listener.next(), await listener.next(), await listener.next()]
        )
    assert got[channels.gateway_control(owner)] == {
        "type": "stop",
        "sessionId": sid,
        "reason": "disconnected",
    }
    assert got[channels.session_events(sid)]["update"] == {
        "sessionUpdate": "acp_status",
        "status": "closed",
    }
    assert got[channels.session_events(sid)]["eventId"] == "2"
    lifecycle = got[channels.workspace_sessions(workspace_id)]
    assert lifecycle["type"] == "session:updated"
    assert lifecycle["changes"] == {"status": "closed", "acpStatus": "closed"}

    session = (await (await client.get(f"/api/sessions/{sid}")).json())["session"]
    assert session["status"] == "closed"
    assert session["acpStatus"] == "closed"
    assert "ownerInstanceId" not in session
    listed = {
        s["sessionId"]: s for s in await list_json(client, workspaceId=workspace_id)
    }
    assert listed[sid]["status"] == "closed"

    # already closed: ok, and no second event
    resp = await client.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    history = (await (await client.get(f"/api/sessions/{sid}/history")).json())[
        "history"
    ]
    assert [e["update"]["sessionUpdate"] for e in history] == [
        "acp_status",
        "acp_status",
    ]


# --- fork -------------------------------------------------------------------------------


async def test_fork_copies_settings_with_an_empty_log(
    client, pool, redis, channels, workspace_id
):
    source = await make_session(
        pool,
        workspace_id,
        name="Original",
        branch="dev",
        mode_id="plan",
        model="echo-large",
        role="DEVELOPER",
        acp_status="ready",
        status="idle",
        owner_instance_id="gw-x",
    )
    await add_events(pool, source, [chunk("a"), chunk("b")])
    async with Listener(redis, channels.workspace_sessions(workspace_id)) as listener:
        resp = await client.post(f"/api/sessions/{source}/fork")
        assert resp.status == 201
        fork = (await resp.json())["session"]
        _, lifecycle = await listener.next()
    assert fork["sessionId"] != source
    uuid.UUID(fork["sessionId"])
    assert fork["parentSessionId"] == source
    assert fork["name"] == "Fork of Original"
    for key, value in {
        "cwd": "/tmp/routa-test",
        "branch": "dev",
        "workspaceId": workspace_id,
        "provider": "echo",
        "role": "DEVELOPER",
        "modeId": "plan",
        "model": "echo-large",
        "status": "closed",
        "acpStatus": "closed",
    }.items():
        assert fork[key] == value, key
    assert "ownerInstanceId" not in fork
    assert lifecycle["type"] == "session:created"
    assert lifecycle["sessionId"] == fork["sessionId"]
    assert lifecycle["changes"] == fork

    history = await client.get(f"/api/sessions/{fork['sessionId']}/history")
    assert (await history.json()) == {"history": []}
    listed = await list_json(client, workspaceId=workspace_id)
    assert listed[0]["sessionId"] == fork["sessionId"]


async def test_fork_names(client, pool, workspace_id):
    unnamed = await make_session(pool, workspace_id)
    resp = await client.post(f"/api/sessions/{unnamed}/fork", json={})
    assert resp.status == 201
    assert (await resp.json())["session"]["name"] == f"Fork of {unnamed}"
    resp = await client.post(f"/api/sessions/{unnamed}/fork", json={"name": " Mine "})
    assert (await resp.json())["session"]["name"] == "Mine"
    long = await make_session(pool, workspace_id, name="y" * 200)
    resp = await client.post(f"/api/sessions/{long}/fork")
    assert len((await resp.json())["session"]["name"]) == 200
    resp = await client.post(f"/api/sessions/{unnamed}/fork", json={"name": ""})
    assert resp.status == 400
    assert await resp.json() == {"error": "Invalid name"}


# --- history ----------------------------------------------------------------------------


async def test_history_pages_in_order(client, pool, workspace_id):
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [chunk(f"{i} ") for i in range(1, 8)])
    resp = await client.get(f"/api/sessions/{sid}/history")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    history = (await resp.json())["history"]
    assert [e["eventId"] for e in history] == [str(i) for i in range(1, 8)]
    assert all(e["sessionId"] == sid for e in history)

    async def page(**params):
        r = await client.get(f"/api/sessions/{sid}/history", params=params)
        assert r.status == 200
        return [e["eventId"] for e in (await r.json())["history"]]

    assert await page(after="2", limit="3") == ["3", "4", "5"]
    assert await page(after="5") == ["6", "7"]
    assert await page(after="0", limit="1") == ["1"]
    assert await page(after="7") == []
    assert await page(after="100") == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "-1"}, "Invalid after: -1"),
        ({"after": "abc"}, "Invalid after: abc"),
        ({"after": "1.5"}, "Invalid after: 1.5"),
        ({"limit": "0"}, "Invalid limit: 0"),
        ({"limit": "1001"}, "Invalid limit: 1001"),
        ({"consolidated": "yes"}, "Invalid consolidated: yes"),
    ],
)
async def test_history_rejects_bad_params(client, pool, workspace_id, params, message):
    sid = await make_session(pool, workspace_id)
    resp = await client.get(f"/api/sessions/{sid}/history", params=params)
    assert resp.status == 400
    assert await resp.json() == {"error": message}


async def test_history_consolidated(client, pool, workspace_id):
    sid = await make_session(pool, workspace_id)
    await add_events(
        pool,
        sid,
        [
            {
                "sessionUpdate": "user_message",
                "content": {"type": "text", "text": "hi"},
            },
            chunk("echo: ", "m1"),
            chunk("hello ", "m1"),
            chunk("world", "m1"),
            chunk("other", "m2"),
            {"sessionUpdate": "turn_complete", "stopReason": "end_turn"},
            chunk("a"),
            chunk("b"),
            {"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "x"},
            chunk("c"),
        ],
    )
    resp = await client.get(
        f"/api/sessions/{sid}/history", params={"consolidated": "true"}
    )
    assert resp.status == 200
    history = (await resp.json())["history"]
    assert [(e["eventId"], e["update"]["sessionUpdate"]) for e in history] == [
        ("1", "user_message"),
        ("4", "agent_message"),
        ("5", "agent_message"),
        ("6", "turn_complete"),
        ("8", "agent_message"),
        ("9", "tool_call"),
        ("10", "agent_message"),
    ]
    assert history[1]["update"] == {
        "sessionUpdate": "agent_message",
        "messageId": "m1",
        "content": {"type": "text", "text": "echo: hello world"},
    }
    assert history[1]["sessionId"] == sid
    assert history[2]["update"]["content"]["text"] == "other"
    assert history[4]["update"] == {
        "sessionUpdate": "agent_message",
        "content": {"type": "text", "text": "ab"},
    }
    # applied to the page: the run is cut where the page ends
    resp = await client.get(
        f"/api/sessions/{sid}/history",
        params={"consolidated": "true", "after": "2", "limit": "1"},
    )
    page = (await resp.json())["history"]
    assert [(e["eventId"], e["update"]["content"]["text"]) for e in page] == [
        ("3", "hello ")
    ]
    plain = await client.get(
        f"/api/sessions/{sid}/history", params={"consolidated": "false"}
    )
    assert len((await plain.json())["history"]) == 10


# --- context ----------------------------------------------------------------------------


async def test_context(client, pool, workspace_id):
    await pool.execute(
        "INSERT INTO codebases (workspace_id, id, repo_path, branch, position) "
        "VALUES ($1, 'cb1', '/repo/one', 'main', 0), ($1, 'cb2', '/repo/two', NULL, 1)",
        workspace_id,
    )
    parent = await make_session(pool, workspace_id, name="Parent")
    sid = await make_session(
        pool,
        workspace_id,
        parent_session_id=uuid.UUID(parent),
        mode_id="chat",
        model="echo-small",
    )
    child = await make_session(
        pool, workspace_id, name="Kid", parent_session_id=uuid.UUID(sid)
    )
    await add_events(
        pool,
        sid,
        [
            {
                "sessionUpdate": "tool_call",
                "toolCallId": "t1",
                "locations": [{"path": "/w/a.py"}, {"path": "/w/b.py"}],
            },
            chunk("x"),
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": "t2",
                "rawInput": {"path": "/w/c.py"},
            },
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": "t1",
                "locations": [{"path": "/w/a.py", "line": 3}],
            },
        ],
    )
    resp = await client.get(f"/api/sessions/{sid}/context")
    assert resp.status == 200
    context = await resp.json()
    assert context == {
        "sessionId": sid,
        "cwd": "/tmp/routa-test",
        "modeId": "chat",
        "model": "echo-small",
        "workspace": {
            "id": workspace_id,
            "title": f"Test {workspace_id}",
            "codebases": [
                {"id": "cb1", "repoPath": "/repo/one", "branch": "main"},
                {"id": "cb2", "repoPath": "/repo/two"},
            ],
        },
        "files": ["/w/a.py", "/w/c.py", "/w/b.py"],
        "historyLength": 4,
        "parent": {"sessionId": parent, "name": "Parent", "status": "closed"},
        "children": [{"sessionId": child, "name": "Kid", "status": "closed"}],
    }
    # no parent, no mode/model: keys absent
    bare = await (await client.get(f"/api/sessions/{parent}/context")).json()
    assert "parent" not in bare
    assert "modeId" not in bare
    assert "model" not in bare
    assert bare["files"] == []
    assert bare["historyLength"] == 0
    assert bare["children"] == [{"sessionId": sid, "status": "closed"}]
