"""Agent faults (issue 7 item 3): each ends in a reported error or a finished turn, the
gateway keeps serving other sessions, and no agent process is left behind or unreaped."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from tests.faults.support import (
    assert_gateway_works,
    new_bad,
    wait_gone,
    wait_no_zombies,
)
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
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(**overrides):
        settings = make_settings(allow_custom_commands=True, **overrides)
        return await aiohttp_client(create_app(settings))

    return _make


def _statuses(evs):
    return [e["update"] for e in evs if e["update"]["sessionUpdate"] == "acp_status"]


async def _agent_pid(gw, sid) -> int:
    live = gw.app[SESSION_MANAGER].live[sid]
    assert live.agent is not None
    assert live.agent.pid is not None
    return live.agent.pid


async def test_crash_mid_turn(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    pid = await _agent_pid(gw, sid)
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "crash"})
    assert e["code"] == -32000
    evs = await events(pool, sid)
    # the chunk sent before dying is kept; the turn ends with exactly one error
    assert kinds(evs).count("error") == 1
    assert "turn_complete" not in kinds(evs)
    last = _statuses(evs)[-1]
    assert last["status"] == "error"
    assert "code 5" in last["error"]
    row = await sessions.get(pool, uuid.UUID(sid))
    assert (row.acp_status, row.status) == ("error", "closed")
    await wait_gone(pid)
    await wait_no_zombies()
    await assert_gateway_works(gw, pool, workspace_id)
    # the session stays resumable: the next prompt starts a new agent
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "again"})
    assert out["stopReason"] == "end_turn"


async def test_initialize_never_answered(make_gw, pool, workspace_id):
    # long enough for echo (a Python process importing the SDK) to start on a loaded box
    gw = await make_gw(agent_request_timeout=10.0)
    sid = await new_bad(gw, workspace_id, "--hang-init")
    evs = await wait_ready(pool, sid)
    assert has_status("error")(evs)
    assert not has_status("ready")(evs)
    assert "initialize" in _statuses(evs)[-1]["error"]
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.acp_status == "error"
    assert "did not answer initialize" in (row.acp_error or "")
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    assert e["code"] == -32000
    assert sid not in gw.app[SESSION_MANAGER].live or (
        gw.app[SESSION_MANAGER].live[sid].stopping
    )
    await wait_no_zombies()
    await assert_gateway_works(gw, pool, workspace_id)


async def test_prompt_never_answered_cancel_and_watchdog(make_gw, pool, workspace_id):
    gw = await make_gw(cancel_watchdog=0.3)
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    turn = asyncio.create_task(
        ok(gw, "session/prompt", {"sessionId": sid, "prompt": "hang"})
    )
    await wait_events(pool, sid, lambda evs: "user_message" in kinds(evs))
    # the gateway keeps serving while the turn hangs
    await assert_gateway_works(gw, pool, workspace_id)
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    async with asyncio.timeout(20):
        assert await turn == {"stopReason": "cancelled"}
    evs = await events(pool, sid)
    assert kinds(evs).count("turn_complete") == 1
    assert "error" not in kinds(evs)
    # the agent is alive and takes the next prompt
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "next"})
    assert out["stopReason"] == "end_turn"
    await wait_no_zombies()


async def test_garbage_lines_are_skipped(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    for prompt in ("garbage", f"hugegarbage {4 * 1024 * 1024}"):
        out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": prompt})
        assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
    assert kinds(evs).count("turn_complete") == 2
    assert (await sessions.get(pool, uuid.UUID(sid))).acp_status == "ready"
    await assert_gateway_works(gw, pool, workspace_id)


async def test_non_object_line_ends_session_with_error(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    pid = await _agent_pid(gw, sid)
    async with asyncio.timeout(20):
        e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "nonobject"})
    assert e["code"] == -32000
    evs = await events(pool, sid)
    assert kinds(evs).count("error") == 1
    assert _statuses(evs)[-1]["status"] == "error"
    await wait_gone(pid)
    await wait_no_zombies()
    await assert_gateway_works(gw, pool, workspace_id)


async def test_huge_line(make_gw, pool, workspace_id):
    """A 4 MiB event line: stored whole or refused with an error, never a hung gateway."""
    gw = await make_gw()
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    size = 4 * 1024 * 1024
    body = await ok_or_err(gw, sid, f"huge {size}")
    evs = await events(pool, sid)
    if "error" in body:
        assert kinds(evs).count("error") == 1
    else:
        chunks = [
            e["update"]["content"]["text"]
            for e in evs
            if e["update"]["sessionUpdate"] == "agent_message_chunk"
        ]
        assert any(len(c) == size for c in chunks) or any(
            e["update"]["sessionUpdate"] == "error" for e in evs
        )
        assert kinds(evs).count("turn_complete") == 1
    await wait_no_zombies()
    await assert_gateway_works(gw, pool, workspace_id)


async def ok_or_err(gw, sid, prompt):
    from tests.gateway.rpcutil import call

    async with asyncio.timeout(30):
        return await call(gw, "session/prompt", {"sessionId": sid, "prompt": prompt})


async def test_stderr_flood(make_gw, pool, workspace_id):
    """16 MiB of stderr in one turn: drained, rate-limited into events, turn completes."""
    gw = await make_gw()
    sid = await new_bad(gw, workspace_id)
    await wait_ready(pool, sid)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "stderr 16"})
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    outputs = [e for e in evs if e["update"]["sessionUpdate"] == "process_output"]
    # 262,144 lines were written; only a rate-limited few become events
    assert 0 < len(outputs) < 10_000
    live = gw.app[SESSION_MANAGER].live[sid]
    assert live.agent is not None
    assert live.agent.stderr_dropped > 0
    await assert_gateway_works(gw, pool, workspace_id)


async def test_agent_ignoring_sigterm_is_killed_with_its_group(
    make_gw, pool, workspace_id, tmp_path
):
    gw = await make_gw(agent_idle_timeout=0.5)
    pidfile = tmp_path / "pids"
    sid = await new_bad(gw, workspace_id, "--ignore-sigterm", "--pidfile", str(pidfile))
    await wait_ready(pool, sid)
    async with asyncio.timeout(20):
        while not pidfile.exists() or len(pidfile.read_text().split()) != 2:
            await asyncio.sleep(0.02)
    agent_pid, child_pid = (int(p) for p in pidfile.read_text().split())
    # the idle sweeper stops it: stdin closed and SIGTERM are ignored, SIGKILL is not
    evs = await wait_events(pool, sid, has_status("closed"))
    assert _statuses(evs)[-1]["status"] == "closed"
    await wait_gone(agent_pid, child_pid)
    await wait_no_zombies()
    # the event is stored before the teardown finishes: wait for it to let go
    await wait_until(lambda: sid not in gw.app[SESSION_MANAGER].live)
    await assert_gateway_works(gw, pool, workspace_id)
