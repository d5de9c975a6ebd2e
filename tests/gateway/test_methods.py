"""Session JSON-RPC methods against the real echo agent, Postgres and Redis (api.md §5.2-§5.4)."""

from __future__ import annotations

import pytest

from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from tests.gateway.rpcutil import events, kinds, ok


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
