"""Session JSON-RPC methods against the real echo agent, Postgres and Redis."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from tests.gateway.rpcutil import (
    err,
    events,
    has_status,
    kinds,
    ok,
    wait_events,
    wait_ready,
    wait_until,
)


@pytest.fixture
async def gw(settings, aiohttp_client, cwd_root):
    return await aiohttp_client(create_app(settings))


async def new_echo(gw, workspace_id, **extra):
    return await ok(gw, "session/new", {"workspaceId": workspace_id, **extra})


async def test_full_echo_turn(gw, pool, workspace_id):
    res = await new_echo(gw, workspace_id)
    sid = res["sessionId"]
    assert res["acpStatus"] == "connecting"
    assert res["provider"] == "echo"
    assert res["role"] == "CRAFTER"
    assert res["ownerInstanceId"] == gw.app[SESSION_MANAGER].settings.instance_id
    # event 1 is stored before the reply
    first = await events(pool, sid)
    assert kinds(first)[:1] == ["acp_status"]
    assert first[0]["update"]["status"] == "connecting"
    assert first[0]["eventId"] == "1"
    assert first[0]["sessionId"] == sid

    out = await ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": "hello big world"}
    )
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    ks = kinds(evs)
    assert ks[:2] == ["acp_status", "acp_status"]
    assert evs[1]["update"]["status"] == "ready"
    um = ks.index("user_message")
    assert evs[um]["update"]["content"] == {"type": "text", "text": "hello big world"}
    assert ks[-1] == "turn_complete"
    assert evs[-1]["update"]["stopReason"] == "end_turn"
    chunks = [
        e["update"]["content"]["text"]
        for e in evs[um:]
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    ]
    assert "".join(chunks) == "echo: hello big world"
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
    assert all(e["sessionId"] == sid for e in evs)
    row = await sessions.get(pool, sid)
    assert row.status == "idle"
    assert row.acp_status == "ready"
    assert row.routa_agent_id
    assert row.model == "echo-small"
    assert row.mode_id == "chat"


def text_of(evs, start=0):
    return "".join(
        e["update"]["content"]["text"]
        for e in evs[start:]
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    )


async def ready_echo(gw, pool, workspace_id, **extra):
    sid = (await new_echo(gw, workspace_id, **extra))["sessionId"]
    evs = await wait_ready(pool, sid)
    assert has_status("ready")(evs), evs
    return sid


async def test_session_new_validation(
    gw, workspace_id, cwd_root, monkeypatch, tmp_path
):
    # opencode missing: neither pinned (scripts/install-agents) nor on PATH
    monkeypatch.setattr("shared.providers.AGENTS_BIN", tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    e = await err(gw, "session/new", {})
    assert e["code"] == -32602
    assert "workspaceId" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": 5})
    assert e["code"] == -32602
    assert "workspaceId" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": "nope-" + uuid.uuid4().hex})
    assert e["code"] == -32602
    assert e["message"].startswith("Unknown workspace: nope-")
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "provider": "zzz"})
    assert e["code"] == -32602
    assert "provider" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "cwd": "/etc"})
    assert e["code"] == -32602
    assert "cwd" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "cwd": "rel/dir"})
    assert e["code"] == -32602
    assert "cwd" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "model": "gpt-9"})
    assert e["code"] == -32602
    assert "model" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "modeId": "warp"})
    assert e["code"] == -32602
    assert "modeId" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "name": "x" * 201})
    assert e["code"] == -32602
    assert "name" in e["message"]
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "name": "   "})
    assert e["code"] == -32602
    e = await err(gw, "session/new", {"workspaceId": workspace_id, "role": "BOSS"})
    assert e["code"] == -32602
    assert "role" in e["message"]
    e = await err(
        gw, "session/new", {"workspaceId": workspace_id, "customCommand": "true"}
    )
    assert e["code"] == -32602
    assert "customCommand" in e["message"]
    e = await err(
        gw, "session/new", {"workspaceId": workspace_id, "provider": "opencode"}
    )
    assert e["code"] == -32002
    assert "opencode" in e["message"]


async def test_session_new_options(gw, pool, workspace_id, cwd_root):
    cwd = cwd_root / workspace_id / "given"
    res = await new_echo(
        gw,
        workspace_id,
        name="  My session ",
        cwd=str(cwd),
        role="gate",
        mode="plan",
        model="echo-large",
        branch="main",
        unknownParam=1,
    )
    sid = res["sessionId"]
    assert res["role"] == "GATE"
    await wait_ready(pool, sid)
    row = await sessions.get(pool, sid)
    assert row.name == "My session"
    assert row.cwd == str(cwd)
    assert row.mode_id == "plan"
    assert row.model == "echo-large"
    assert row.branch == "main"
    assert cwd.is_dir()


async def test_idempotency_key(gw, pool, workspace_id):
    import asyncio

    params = {"workspaceId": workspace_id, "idempotencyKey": "k-" + uuid.uuid4().hex}
    a, b = await asyncio.gather(
        ok(gw, "session/new", params), ok(gw, "session/new", params)
    )
    assert a["sessionId"] == b["sessionId"]
    assert [a.get("cached"), b.get("cached")].count(True) == 1
    c = await ok(gw, "session/new", params)
    assert c["sessionId"] == a["sessionId"]
    assert c["cached"] is True
    d = await ok(
        gw, "session/new", {**params, "idempotencyKey": "other-" + uuid.uuid4().hex}
    )
    assert d["sessionId"] != a["sessionId"]


async def test_prompt_validation_and_unknown_session(gw, pool, workspace_id):
    unknown = str(uuid.uuid4())
    for method in (
        "session/prompt",
        "session/cancel",
        "session/load",
        "session/set_mode",
        "session/set_model",
    ):
        params = {
            "sessionId": unknown,
            "prompt": "x",
            "modeId": "chat",
            "model": "echo-small",
        }
        e = await err(gw, method, params)
        assert e["code"] == -32004, method
        assert e["message"] == f"Session not found: {unknown}"
    sid = await ready_echo(gw, pool, workspace_id)
    for bad in ({}, {"prompt": ""}, {"prompt": "   "}, {"prompt": []}, {"prompt": 5}):
        e = await err(gw, "session/prompt", {"sessionId": sid, **bad})
        assert e["code"] == -32602
        assert "prompt" in e["message"]
    out = await ok(
        gw,
        "session/prompt",
        {"sessionId": sid, "prompt": [{"type": "text", "text": "blocks work"}]},
    )
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert text_of(evs).endswith("echo: blocks work")


async def test_second_prompt_and_cancel(gw, pool, workspace_id):
    import asyncio

    sid = await ready_echo(gw, pool, workspace_id)
    # cancel while idle: {} and no event
    before = len(await events(pool, sid))
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    assert len(await events(pool, sid)) == before
    running = asyncio.create_task(
        ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/slow 20"})
    )
    await wait_events(pool, sid, lambda evs: "agent_message_chunk" in kinds(evs))
    row = await sessions.get(pool, sid)
    assert row.status == "active"
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "again"})
    assert e["code"] == -32000
    assert e["message"] == "A prompt is already running for this session"
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    out = await running
    assert out["stopReason"] == "cancelled"
    evs = await events(pool, sid)
    assert kinds(evs).count("turn_complete") == 1
    assert evs[-1]["update"] == {
        "sessionUpdate": "turn_complete",
        "stopReason": "cancelled",
    }
    assert "error" not in kinds(evs)
    row = await sessions.get(pool, sid)
    assert row.status == "idle"


async def test_set_mode_and_model(gw, pool, workspace_id):
    sid = await ready_echo(gw, pool, workspace_id)
    assert await ok(gw, "session/set_mode", {"sessionId": sid, "modeId": "plan"}) == {}
    evs = await events(pool, sid)
    modes = [
        e["update"]
        for e in evs
        if e["update"]["sessionUpdate"] == "current_mode_update"
    ]
    assert modes[-1]["currentModeId"] == "plan"
    assert len(modes) == 1
    assert (await sessions.get(pool, sid)).mode_id == "plan"
    e = await err(gw, "session/set_mode", {"sessionId": sid, "modeId": "warp"})
    assert e["code"] == -32602
    assert "modeId" in e["message"]
    e = await err(gw, "session/set_mode", {"sessionId": sid})
    assert e["code"] == -32602
    assert "modeId" in e["message"]
    assert (
        await ok(gw, "session/set_model", {"sessionId": sid, "model": "echo-large"})
        == {}
    )
    assert (await sessions.get(pool, sid)).model == "echo-large"
    e = await err(gw, "session/set_model", {"sessionId": sid, "model": "gpt-9"})
    assert e["code"] == -32602
    assert "model" in e["message"]
    e = await err(gw, "session/set_model", {"sessionId": sid, "model": 3})
    assert e["code"] == -32602
    assert "model" in e["message"]
    assert (await sessions.get(pool, sid)).model == "echo-large"


async def _permission_turn(gw, pool, sid):
    import asyncio

    skip = len(await events(pool, sid))
    task = asyncio.create_task(
        ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/permission"})
    )
    evs = await wait_events(
        pool,
        sid,
        lambda evs: any(
            e["update"]["sessionUpdate"] == "tool_call"
            and e["update"].get("status") == "waiting"
            for e in evs[skip:]
        ),
    )
    waiting = next(
        e["update"] for e in evs[skip:] if e["update"].get("status") == "waiting"
    )
    assert waiting["title"]
    assert {o["optionId"] for o in waiting["options"]} >= {"allow_once", "reject_once"}
    return task, waiting["toolCallId"]


async def test_permission_approve_and_deny(gw, pool, workspace_id):
    sid = await ready_echo(gw, pool, workspace_id)
    e = await err(
        gw,
        "session/respond_user_input",
        {"sessionId": sid, "toolCallId": "nope", "response": {"decision": "approve"}},
    )
    assert e["code"] == -32000
    task, tcid = await _permission_turn(gw, pool, sid)
    res = await ok(
        gw,
        "session/respond_user_input",
        {"sessionId": sid, "toolCallId": tcid, "response": {"decision": "approve"}},
    )
    assert res == {"ok": True}
    assert (await task)["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    updates = [
        e["update"] for e in evs if e["update"]["sessionUpdate"] == "tool_call_update"
    ]
    assert updates[-1]["toolCallId"] == tcid
    assert text_of(evs, kinds(evs).index("turn_complete") - 3).endswith("approved")

    task, tcid = await _permission_turn(gw, pool, sid)
    await ok(
        gw,
        "session/respond_user_input",
        {"sessionId": sid, "toolCallId": tcid, "response": {"optionId": "reject_once"}},
    )
    assert (await task)["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    last_um = len(kinds(evs)) - 1 - kinds(evs)[::-1].index("user_message")
    assert text_of(evs, last_um).strip().endswith("denied")
    e = await err(
        gw,
        "session/respond_user_input",
        {"sessionId": sid, "toolCallId": tcid, "response": {"optionId": "reject_once"}},
    )
    assert e["code"] == -32000


async def test_auto_approve_permissions(gw, pool, workspace_id):
    sid = await ready_echo(gw, pool, workspace_id, autoApprovePermissions=True)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/permission"})
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert not any(e["update"].get("status") == "waiting" for e in evs)
    assert text_of(evs).strip().endswith("approved")


async def test_fs_inside_and_outside_cwd(gw, pool, workspace_id, cwd_root, tmp_path):
    cwd = cwd_root / workspace_id / ("fs-" + uuid.uuid4().hex[:6])
    cwd.mkdir(parents=True)
    (cwd / "note.txt").write_text("first line\nsecond\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret\n")
    sid = await ready_echo(gw, pool, workspace_id, cwd=str(cwd))
    await ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": f"/read {cwd / 'note.txt'}"}
    )
    evs = await events(pool, sid)
    assert text_of(evs).strip().endswith("first line")
    await ok(gw, "session/prompt", {"sessionId": sid, "prompt": f"/read {outside}"})
    evs = await events(pool, sid)
    last_um = len(evs) - 1 - kinds(evs)[::-1].index("user_message")
    assert "top secret" not in text_of(evs, last_um)
    await ok(
        gw,
        "session/prompt",
        {"sessionId": sid, "prompt": f"/read {cwd}/../{outside.name}"},
    )
    await ok(
        gw,
        "session/prompt",
        {"sessionId": sid, "prompt": f"/write {cwd / 'out.txt'} hello there"},
    )
    assert (cwd / "out.txt").read_text() == "hello there"
    await ok(
        gw,
        "session/prompt",
        {"sessionId": sid, "prompt": f"/write {tmp_path / 'evil.txt'} x"},
    )
    assert not (tmp_path / "evil.txt").exists()


async def test_agent_error_and_crash_then_resume(gw, pool, workspace_id):
    sid = await ready_echo(gw, pool, workspace_id)
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "/fail"})
    assert e["code"] == -32000
    assert e["data"]["agentError"]["code"] == -32603
    assert "asked to fail" in e["data"]["agentError"]["message"]
    evs = await events(pool, sid)
    assert kinds(evs)[-1] == "error"

    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "/crash"})
    assert e["code"] == -32000
    evs = await events(pool, sid)
    ks = kinds(evs)
    last_um = len(ks) - 1 - ks[::-1].index("user_message")
    tail = ks[last_um:]
    assert tail.count("error") == 1
    assert "turn_complete" not in tail
    status = [
        e["update"]
        for e in evs[last_um:]
        if e["update"]["sessionUpdate"] == "acp_status"
    ]
    assert status[-1]["status"] == "error"
    assert "3" in status[-1]["error"]
    row = await sessions.get(pool, sid)
    assert row.status == "closed"
    assert row.acp_status == "error"
    assert row.continuity_status == "restorable"
    # the next prompt resumes the session
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "back again"})
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    ks = kinds(evs)
    last_um = len(ks) - 1 - ks[::-1].index("user_message")
    # the resume events come before the user_message of the new turn
    assert [e["update"].get("status") for e in evs[last_um - 2 : last_um]] == [
        "connecting",
        "ready",
    ]
    assert text_of(evs, last_um).endswith("echo: back again")
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]


async def test_stderr_flood_and_unknown_kind(gw, pool, workspace_id):
    sid = await ready_echo(gw, pool, workspace_id)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/stderr 512"})
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    outputs = [
        e["update"] for e in evs if e["update"]["sessionUpdate"] == "process_output"
    ]
    assert outputs
    assert all(o["source"] == "stderr" and o["data"].endswith("\n") for o in outputs)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/unknown"})
    evs = await events(pool, sid)
    custom = [e for e in evs if e["update"]["sessionUpdate"] == "echo_custom"]
    assert custom
    assert custom[0]["update"] == {"sessionUpdate": "echo_custom", "value": 1}


async def test_providers_list(gw):
    res = await ok(gw, "_providers/list")
    ids = [p["id"] for p in res["providers"]]
    assert "echo" in ids
    statuses = [p["status"] for p in res["providers"]]
    assert statuses == sorted(statuses, key=lambda s: s != "available")
    echo = next(p for p in res["providers"] if p["id"] == "echo")
    assert echo["status"] == "available"
    assert set(echo) == {"id", "name", "description", "command", "status"}


async def test_prompt_timeout_answers_pending(
    make_settings, aiohttp_client, pool, workspace_id, cwd_root
):
    gw = await aiohttp_client(create_app(make_settings(prompt_timeout=0.3)))
    sid = await ready_echo(gw, pool, workspace_id)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/slow 1"})
    assert out == {"sessionId": sid, "pending": True}
    evs = await wait_events(pool, sid, lambda evs: "turn_complete" in kinds(evs))
    assert evs[-1]["update"]["stopReason"] == "end_turn"


async def test_resume_after_restart(
    make_settings, aiohttp_client, pool, workspace_id, cwd_root
):
    app1 = await aiohttp_client(create_app(make_settings()))
    sid = await ready_echo(app1, pool, workspace_id)
    await ok(app1, "session/prompt", {"sessionId": sid, "prompt": "before restart"})
    old_agent = (await sessions.get(pool, sid)).routa_agent_id
    await app1.close()
    row = await sessions.get(pool, sid)
    assert row.status == "closed"
    assert row.owner_instance_id is None
    assert row.continuity_status == "restorable"

    app2 = await aiohttp_client(create_app(make_settings()))
    res = await ok(app2, "session/load", {"sessionId": sid})
    assert res["resumeMode"] == "recreated"
    assert res["acpStatus"] == "ready"
    assert res["sessionId"] == sid
    res = await ok(app2, "session/load", {"sessionId": sid})
    assert res["resumeMode"] == "attached"
    row = await sessions.get(pool, sid)
    assert row.owner_instance_id == app2.app[SESSION_MANAGER].settings.instance_id
    assert row.status == "idle"
    assert row.routa_agent_id != old_agent
    await app2.close()

    # implicit resume on prompt
    app3 = await aiohttp_client(create_app(make_settings()))
    out = await ok(
        app3, "session/prompt", {"sessionId": sid, "prompt": "after restart"}
    )
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert text_of(evs).endswith("echo: after restart")
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
    assert kinds(evs).count("user_message") == 2


async def test_idle_timeout_stops_agent(
    make_settings, aiohttp_client, pool, workspace_id, cwd_root
):
    gw = await aiohttp_client(create_app(make_settings(agent_idle_timeout=0.3)))
    sid = await ready_echo(gw, pool, workspace_id)
    evs = await wait_events(pool, sid, has_status("closed"))
    assert kinds(evs)[-1] == "acp_status"
    manager = gw.app[SESSION_MANAGER]
    await wait_until(lambda: sid not in manager.live)
    row = await sessions.get(pool, sid)
    assert row.status == "closed"
    assert row.acp_status == "closed"
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "wake up"})
    assert out["stopReason"] == "end_turn"


async def test_control_stop_is_quiet(gw, pool, redis, channels, workspace_id):
    import orjson

    sid = await ready_echo(gw, pool, workspace_id)
    manager = gw.app[SESSION_MANAGER]
    agent = manager.live[sid].agent
    before = await events(pool, sid)
    await redis.publish(
        channels.gateway_control(manager.settings.instance_id),
        orjson.dumps({"type": "stop", "sessionId": sid, "reason": "disconnected"}),
    )
    await wait_until(lambda: sid not in manager.live)
    assert agent.proc.returncode is not None
    assert await events(pool, sid) == before


async def test_max_sessions_stops_lru_idle(
    make_settings, aiohttp_client, pool, workspace_id, cwd_root
):
    gw = await aiohttp_client(create_app(make_settings(max_sessions=1)))
    first = await ready_echo(gw, pool, workspace_id)
    second = await ready_echo(gw, pool, workspace_id)
    manager = gw.app[SESSION_MANAGER]
    assert list(manager.live) == [second]
    evs = await events(pool, first)
    assert evs[-1]["update"] == {"sessionUpdate": "acp_status", "status": "closed"}
    # a busy agent cannot be displaced
    import asyncio

    task = asyncio.create_task(
        ok(gw, "session/prompt", {"sessionId": second, "prompt": "/slow 20"})
    )
    await wait_events(pool, second, lambda evs: "agent_message_chunk" in kinds(evs))
    e = await err(gw, "session/new", {"workspaceId": workspace_id})
    assert e["code"] == -32000
    assert e["message"] == "Gateway at capacity"
    await ok(gw, "session/cancel", {"sessionId": second})
    assert (await task)["stopReason"] == "cancelled"


async def test_lifecycle_messages(gw, pool, redis, channels, workspace_id):
    import asyncio

    import orjson

    pubsub = redis.pubsub()
    await pubsub.subscribe(channels.workspace_sessions(workspace_id))
    try:
        sid = await ready_echo(gw, pool, workspace_id)
        await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
        seen = []
        async with asyncio.timeout(10):
            while not any(
                m["changes"].get("status") == "idle"
                and m["type"] == "session:updated"
                and len(seen) > 2
                for m in seen
            ):
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if msg:
                    seen.append(orjson.loads(msg["data"]))
        assert seen[0]["type"] == "session:created"
        assert seen[0]["changes"]["sessionId"] == sid
        assert seen[0]["changes"]["acpStatus"] == "connecting"
        assert any(m["changes"].get("acpStatus") == "ready" for m in seen)
        assert any(m["changes"].get("status") == "active" for m in seen)
    finally:
        await pubsub.aclose()
