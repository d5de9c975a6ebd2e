"""Credentials for agents: AGENT_ENV_<PROVIDER>, the presets' own variables, and -32002.

Through a raw agent that fails like real ones do without credentials
(agents/credentials_agent.py); the real agents are in tests/realagents.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from services.gateway.app import create_app
from shared.providers import (
    CLAUDE_ENV,
    PROVIDERS,
    gateway_auth,
    missing_credentials,
    provider_env,
    resolve_binary,
)
from shared.settings import Settings
from tests.gateway.rpcutil import call, events, ok, wait_ready

AGENT = Path(__file__).parent / "agents" / "credentials_agent.py"


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(**overrides):
        settings = make_settings(allow_custom_commands=True, **overrides)
        return await aiohttp_client(create_app(settings))

    return _make


async def _session(gw, pool, workspace_id, *args: str) -> str:
    res = await ok(
        gw,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            "customCommand": sys.executable,
            "customArgs": [str(AGENT), *args],
        },
    )
    await wait_ready(pool, res["sessionId"])
    return str(res["sessionId"])


async def test_agent_env_copies_the_named_variables_only(
    make_gw, pool, workspace_id, monkeypatch
):
    monkeypatch.setenv("PROBE_API_KEY", "sk-probe")
    monkeypatch.setenv("PROBE_OTHER", "not-listed")
    monkeypatch.setenv("IS_SANDBOX", "yes")  # claude-agent-acp's trap: only `1` works
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/x")
    gw = await make_gw(agent_env_custom="PROBE_API_KEY, IS_SANDBOX,UNSET_ONE")
    sid = await _session(gw, pool, workspace_id)
    assert (await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "env"}))[
        "stopReason"
    ] == "end_turn"
    chunks = [
        e["update"]["content"]["text"]
        for e in await events(pool, sid)
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    ]
    env = orjson.loads(chunks[-1])
    assert env["PROBE_API_KEY"] == "sk-probe"
    assert env["IS_SANDBOX"] == "1"
    for absent in ("PROBE_OTHER", "UNSET_ONE", "DATABASE_URL"):
        assert absent not in env


@pytest.mark.parametrize("prompt", ["auth", "refused"])
async def test_missing_or_refused_credentials_answer_32002(
    make_gw, pool, workspace_id, prompt, caplog
):
    gw = await make_gw()
    sid = await _session(gw, pool, workspace_id)
    with caplog.at_level(logging.WARNING, logger="services.gateway.agents"):
        reply = await call(gw, "session/prompt", {"sessionId": sid, "prompt": prompt})
    error = reply["error"]
    assert error["code"] == -32002, error
    agent_error = error["data"]["agentError"]
    assert agent_error["message"] in error["message"]
    assert "AGENT_ENV_CUSTOM" in error["message"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"session={sid} provider=custom method=session/prompt code={agent_error['code']}"
        in line
        and "duration=" in line
        for line in logged
    ), logged


async def test_credentials_refused_at_session_new_answer_32002(
    make_gw, pool, workspace_id
):
    gw = await make_gw()
    sid = await _session(gw, pool, workspace_id, "--no-key")
    status = [
        e["update"]
        for e in await events(pool, sid)
        if e["update"]["sessionUpdate"] == "acp_status"
    ]
    assert status[-1]["status"] == "error"
    assert "API key is missing" in status[-1]["error"]
    reply = await call(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    assert reply["error"]["code"] == -32002, reply
    assert "API key is missing" in reply["error"]["message"]


async def test_other_agent_errors_stay_32000(make_gw, pool, workspace_id):
    gw = await make_gw()
    sid = await _session(gw, pool, workspace_id)
    reply = await call(gw, "session/prompt", {"sessionId": sid, "prompt": "boom"})
    assert reply["error"]["code"] == -32000
    assert reply["error"]["data"]["agentError"]["message"] == "Internal error: boom"


def test_provider_env_presets_and_copies():
    settings = Settings(agent_env_claude="ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL")
    environ = {
        "ANTHROPIC_API_KEY": "k",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "OPENAI_API_KEY": "o",
        "IS_SANDBOX": "yes",
    }
    claude = provider_env("claude", settings, environ)
    assert claude == {
        "ANTHROPIC_API_KEY": "k",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        **dict(CLAUDE_ENV),
    }
    assert provider_env("opencode", settings, environ) == {}
    falsy = Settings(agent_env_claude="IS_SANDBOX")
    assert "IS_SANDBOX" not in provider_env("claude", falsy, {"IS_SANDBOX": "0"})


def test_claude_gateway_auth_withholds_the_key_from_the_environment():
    named = "ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN,ANTHROPIC_BASE_URL,IS_SANDBOX"
    environ = {
        "ANTHROPIC_API_KEY": "k",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "IS_SANDBOX": "1",
    }
    by_env = Settings(agent_env_claude=named)
    assert gateway_auth("claude", by_env, environ) is None
    assert provider_env("claude", by_env, environ)["ANTHROPIC_API_KEY"] == "k"
    by_acp = Settings(agent_env_claude=named, agent_auth_claude=" Gateway ")
    assert gateway_auth("claude", by_acp, environ) == {
        "baseUrl": "http://127.0.0.1:9",
        "headers": {"x-api-key": "k"},
    }
    env = provider_env("claude", by_acp, environ)
    assert not {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"} & set(env)
    assert env["IS_SANDBOX"] == "1"
    # a bearer token, and the vendor's URL by default; other providers are untouched
    assert gateway_auth("claude", by_acp, {"ANTHROPIC_AUTH_TOKEN": "t"}) == {
        "baseUrl": "https://api.anthropic.com",
        "headers": {"Authorization": "Bearer t"},
    }
    assert gateway_auth("opencode", by_acp, environ) is None
    with pytest.raises(ValidationError, match="agent_auth_claude"):
        Settings(agent_auth_claude="netrc")


@pytest.mark.parametrize(
    "name",
    ["DATABASE_URL", "REDIS_URL", "AUTH_TOKENS", "PGPASSWORD", "OPENCODE_CONFIG"],
)
def test_service_variables_are_refused(name):
    with pytest.raises(ValidationError, match=name):
        Settings(agent_env_opencode=f"OPENAI_API_KEY,{name}")


def test_pinned_agents_come_after_the_override_and_before_path(tmp_path, monkeypatch):
    pinned, on_path = tmp_path / "pinned", tmp_path / "path"
    for folder in (pinned, on_path):
        folder.mkdir()
        exe = folder / "opencode"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setattr("shared.providers.AGENTS_BIN", pinned)
    monkeypatch.setenv("PATH", str(on_path))
    opencode = PROVIDERS["opencode"]
    assert resolve_binary(opencode, Settings()) == str(pinned / "opencode")
    override = Settings(opencode_bin=str(on_path / "opencode"))
    assert resolve_binary(opencode, override) == str(on_path / "opencode")
    (pinned / "opencode").unlink()
    assert resolve_binary(opencode, Settings()) == str(on_path / "opencode")


def test_missing_credentials_are_known_before_the_agent_starts():
    named = Settings(
        agent_env_opencode="SCRIPTED_API_KEY,OPENCODE_DISABLE_MODELS_FETCH"
    )
    assert missing_credentials("opencode", named, {}) == ("SCRIPTED_API_KEY",)
    assert missing_credentials("opencode", named, {"SCRIPTED_API_KEY": "k"}) == ()
    # alternatives: either one will do
    both = Settings(agent_env_claude="ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN")
    assert missing_credentials("claude", both, {"ANTHROPIC_AUTH_TOKEN": "t"}) == ()
    assert missing_credentials("claude", both, {"ANTHROPIC_API_KEY": ""}) == (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
    )
    # nothing named: the agent may have its own login
    assert missing_credentials("claude", Settings(), {}) == ()
    assert (
        missing_credentials("claude", Settings(agent_env_claude="IS_SANDBOX"), {}) == ()
    )
    # claude through ACP authenticate reads the key from the gateway's own environment
    by_acp = Settings(agent_auth_claude="gateway")
    assert missing_credentials("claude", by_acp, {}) == (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
    )


async def test_session_new_answers_32002_at_once_when_named_credentials_are_unset(
    make_gw, pool, workspace_id, monkeypatch
):
    monkeypatch.delenv("SCRIPTED_API_KEY", raising=False)
    gw = await make_gw(agent_env_opencode="SCRIPTED_API_KEY")
    before = await pool.fetchval("SELECT count(*) FROM sessions")
    reply = await call(
        gw, "session/new", {"workspaceId": workspace_id, "provider": "opencode"}
    )
    error = reply["error"]
    assert error["code"] == -32002, error
    assert "AGENT_ENV_OPENCODE" in error["message"]
    assert "SCRIPTED_API_KEY" in error["message"]
    assert await pool.fetchval("SELECT count(*) FROM sessions") == before
