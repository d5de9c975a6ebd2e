"""Agent-process paths through a raw fake agent (tests/gateway/agents/fake_agent.py)."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

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
)

FAKE = Path(__file__).parent / "agents" / "fake_agent.py"


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(**overrides):
        settings = make_settings(allow_custom_commands=True, **overrides)
        return await aiohttp_client(create_app(settings))

    return _make


async def new_fake(gw, workspace_id, *args):
    res = await ok(
        gw,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            "customCommand": sys.executable,
            "customArgs": [str(FAKE), *args],
        },
    )
    return res["sessionId"]


async def test_protocol_version_mismatch_fails_session(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_fake(gw, workspace_id, "--protocol", "2")
    evs = await wait_ready(pool, sid)
    assert has_status("error")(evs)
    status = [e["update"] for e in evs if e["update"]["sessionUpdate"] == "acp_status"]
    assert status[-1]["status"] == "error"
    assert "protocol version" in status[-1]["error"]
    row = await sessions.get(pool, sid)
    assert row.acp_status == "error"
    assert row.status == "closed"
    assert "protocol version" in (row.acp_error or "")
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    assert e["code"] == -32000


async def test_cancel_watchdog_ends_ignored_turn(make_gw, pool, workspace_id):
    gw = await make_gw(cancel_watchdog=0.3)
    sid = await new_fake(gw, workspace_id)
    await wait_ready(pool, sid)
    task = asyncio.create_task(
        ok(gw, "session/prompt", {"sessionId": sid, "prompt": "hang"})
    )
    await wait_events(pool, sid, lambda evs: "user_message" in kinds(evs))
    await wait_until_active(pool, sid)
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    out = await task
    assert out == {"stopReason": "cancelled"}
    evs = await events(pool, sid)
    assert kinds(evs).count("turn_complete") == 1
    assert (await sessions.get(pool, sid)).status == "idle"


async def wait_until_active(pool, sid):
    async with asyncio.timeout(10):
        while (await sessions.get(pool, sid)).status != "active":
            await asyncio.sleep(0.02)


async def test_legacy_set_model_usage_and_title(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_fake(gw, workspace_id)
    await wait_ready(pool, sid)
    assert (await sessions.get(pool, sid)).model == "m1"
    assert await ok(gw, "session/set_model", {"sessionId": sid, "model": "m2"}) == {}
    assert (await sessions.get(pool, sid)).model == "m2"
    e = await err(gw, "session/set_model", {"sessionId": sid, "model": "m9"})
    assert e["code"] == -32602
    assert "model" in e["message"]
    out = await ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": "title Fix the bug"}
    )
    assert out["usage"]["totalTokens"] == 3
    evs = await events(pool, sid)
    assert evs[-1]["update"]["usage"]["totalTokens"] == 3
    renamed = [
        e["update"] for e in evs if e["update"]["sessionUpdate"] == "session_renamed"
    ]
    assert renamed == [{"sessionUpdate": "session_renamed", "name": "Fix the bug"}]
    async with asyncio.timeout(10):
        while (await sessions.get(pool, sid)).name != "Fix the bug":
            await asyncio.sleep(0.02)


async def test_agent_without_models(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await new_fake(gw, workspace_id, "--no-models")
    await wait_ready(pool, sid)
    e = await err(gw, "session/set_model", {"sessionId": sid, "model": "m2"})
    assert e["code"] == -32000
    assert "cannot switch models" in e["message"]


async def test_native_load_after_restart(make_gw, pool, workspace_id, tmp_path):
    script = tmp_path / "fake-opencode"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    gw1 = await make_gw(opencode_bin=str(script))
    res = await ok(
        gw1, "session/new", {"workspaceId": workspace_id, "provider": "opencode"}
    )
    sid = res["sessionId"]
    await wait_ready(pool, sid)
    agent_id = (await sessions.get(pool, sid)).routa_agent_id
    await ok(gw1, "session/prompt", {"sessionId": sid, "prompt": "one"})
    await gw1.close()
    gw2 = await make_gw(opencode_bin=str(script))
    res = await ok(gw2, "session/load", {"sessionId": sid})
    assert res["resumeMode"] == "native"
    assert res["provider"] == "opencode"
    assert (await sessions.get(pool, sid)).routa_agent_id == agent_id
    evs = await events(pool, sid)
    texts = [e["update"].get("content", {}).get("text") for e in evs]
    assert "replayed" not in texts  # the agent's history replay is not logged twice
    out = await ok(gw2, "session/prompt", {"sessionId": sid, "prompt": "two"})
    assert out["stopReason"] == "end_turn"
    assert gw2.app[SESSION_MANAGER].live[sid].routa_agent_id == agent_id


async def test_mode_switch_through_the_mode_config_option(make_gw, pool, workspace_id):
    """An agent that offers modes only as a config option gets set_config_option."""
    gw = await make_gw()
    sid = await new_fake(gw, workspace_id, "--mode-option")
    await wait_ready(pool, sid)
    e = await err(gw, "session/set_mode", {"sessionId": sid, "modeId": "nope"})
    assert e["code"] == -32602
    assert "nope" in e["message"]
    assert await ok(gw, "session/set_mode", {"sessionId": sid, "modeId": "plan"}) == {}
    row = await sessions.get(pool, sid)
    assert row.mode_id == "plan"
    modes = [
        e["update"]["currentModeId"]
        for e in await events(pool, sid)
        if e["update"]["sessionUpdate"] == "current_mode_update"
    ]
    assert modes == ["plan"]
