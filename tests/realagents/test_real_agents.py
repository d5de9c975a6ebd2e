"""Our client side against agents we did not write: claude-agent-acp and opencode, offline.

Through the gateway's own JSON-RPC surface: initialize, session/new (the agent's initialize
and session/new behind it), a mode change (session/set_mode), a model change (sent as the
agent's `model` config option, session/set_config_option), and after a gateway restart a
native session/load with the agent's own session id. No credentials and no network, so no
model turn can succeed; claude's prompt must come back as the agent's own error.
"""

from __future__ import annotations

import pytest

from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from tests.gateway.rpcutil import call, events, kinds, ok, wait_ready

pytestmark = [pytest.mark.realagents, pytest.mark.timeout(240)]

AGENTS = [
    pytest.param("claude", "claude-agent-acp", "claude_agent_acp_bin", id="claude"),
    pytest.param("opencode", "opencode", "opencode_bin", id="opencode"),
]


def _other(values: list[str], current: str | None) -> str:
    choices = [v for v in values if v != current]
    assert choices, f"the agent offers no alternative to {current!r}: {values}"
    return choices[0]


def _mode_option(options: list[dict]) -> dict | None:
    for opt in options:
        if opt.get("category") == "mode" or opt.get("id") == "mode":
            values = [o["value"] for o in opt.get("options", []) if "value" in o]
            return {"values": values, "current": opt.get("currentValue")}
    return None


@pytest.mark.parametrize(("provider", "binary", "override"), AGENTS)
async def test_real_agent_session_lifecycle(
    provider,
    binary,
    override,
    offline_agent,
    make_settings,
    aiohttp_client,
    pool,
    workspace_id,
    cwd_root,
):
    settings = make_settings(**{override: offline_agent(binary)})
    gw = await aiohttp_client(create_app(settings))

    init = await ok(gw, "initialize", {"protocolVersion": 1})
    assert init["protocolVersion"] == 1
    listed = {p["id"]: p for p in (await ok(gw, "_providers/list"))["providers"]}
    assert listed[provider]["status"] == "available"

    created = await ok(
        gw, "session/new", {"workspaceId": workspace_id, "provider": provider}
    )
    sid = created["sessionId"]
    evs = await wait_ready(pool, sid)
    statuses = [
        e["update"].get("status")
        for e in evs
        if e["update"]["sessionUpdate"] == "acp_status"
    ]
    assert "ready" in statuses, evs
    row = await sessions.get(pool, sid)
    agent_session = row.routa_agent_id
    assert agent_session, "the agent's own session id is stored"

    live = gw.app[SESSION_MANAGER].live[sid]
    # mode change: session/set_mode with a mode the agent offered, as legacy `modes`
    # (claude) or only as a `mode` config option (opencode, which still takes set_mode)
    option = _mode_option(live.config_options)
    modes = live.mode_ids() or (option or {}).get("values")
    assert modes, "the agent offered modes"
    current = (live.modes or {}).get("currentModeId") or (option or {}).get("current")
    mode = _other(modes, current)
    assert await ok(gw, "session/set_mode", {"sessionId": sid, "modeId": mode}) == {}
    assert (await sessions.get(pool, sid)).mode_id == mode
    evs = await events(pool, sid)
    mode_updates = [
        e["update"]
        for e in evs
        if e["update"]["sessionUpdate"] == "current_mode_update"
    ]
    assert mode_updates, kinds(evs)
    assert mode_updates[-1]["currentModeId"] == mode

    # model change: the agent's model config option (session/set_config_option)
    choice = live.model_choice()
    assert choice is not None, "the agent offered models"
    how, _config_id, values = choice
    assert how == "config"
    model = _other(values, live.model)
    assert await ok(gw, "session/set_model", {"sessionId": sid, "model": model}) == {}
    assert (await sessions.get(pool, sid)).model == model

    if provider == "claude":
        # no credentials: the agent refuses the turn, and says so in its own words
        reply = await call(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
        assert reply["error"]["code"] == -32000
        assert "agentError" in reply["error"].get("data", {}), reply

    # a new gateway (the old one stopped the agent): native load of the agent's session
    await gw.close()
    assert (await sessions.get(pool, sid)).status == "closed"
    gw2 = await aiohttp_client(create_app(settings))
    loaded = await ok(gw2, "session/load", {"sessionId": sid})
    assert loaded["resumeMode"] == "native", loaded
    assert loaded["acpStatus"] == "ready"
    row = await sessions.get(pool, sid)
    assert row.routa_agent_id == agent_session
    assert row.mode_id == mode
    again = await ok(gw2, "session/load", {"sessionId": sid})
    assert again["resumeMode"] == "attached"
    evs = await events(pool, sid)
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
