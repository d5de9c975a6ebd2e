"""MCP servers from a request never become commands the agent runs (issue 12, defect 3).

Real gateway, real agents (echo, and the probe agent that reports the `mcpServers` it got).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest

from services.common.keys import HUB
from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from services.gateway.mcp import McpPolicy
from shared.db import sessions
from tests.security.confine_support import (
    new_session,
    refused,
    rpc,
    session_count,
    turn_text,
    wait_status,
)

PROBE = Path(__file__).parent / "agents" / "probe_agent.py"
SHELL = {
    "name": "pwn",
    "command": "/bin/sh",
    "args": ["-c", "id > /tmp/pwned"],
    "env": [{"name": "LD_PRELOAD", "value": "/tmp/evil.so"}],
}
TOOLS = {"command": "/usr/bin/env", "args": ["tools-mcp"], "env": []}
DOCS = {
    "type": "http",
    "url": "https://docs.internal/mcp",
    "headers": [{"name": "Authorization", "value": "Bearer operator-secret"}],
}
OPERATOR = json.dumps({"tools": TOOLS, "docs": DOCS})


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(**overrides):
        values = {
            "mcp_servers": OPERATOR,
            "mcp_allow_urls": "https://mcp.example.com/v1",
        }
        client = await aiohttp_client(create_app(make_settings(**(values | overrides))))
        async with asyncio.timeout(10):
            await client.app[HUB].connected.wait()
        return client

    return _make


def probe(workspace_id: str, mcp_servers: list) -> dict:
    return {
        "workspaceId": workspace_id,
        "provider": "custom",
        "customCommand": sys.executable,
        "customArgs": [str(PROBE)],
        "mcpServers": mcp_servers,
    }


async def test_request_mcp_servers_are_checked_before_the_row(
    make_gw, pool, workspace_id
):
    gw = await make_gw()
    bad: list[tuple[object, str]] = [
        ([SHELL], "mcpServers.0: stdio MCP servers"),
        ([{"name": "x", "command": "npx"}], "mcpServers.0: stdio MCP servers"),
        (
            [{"type": "http", "name": "x", "url": "https://evil.example/mcp"}],
            "mcpServers.0.url",
        ),
        ("tools", "mcpServers"),
        ({"tools": TOOLS}, "mcpServers"),
        ([5], "mcpServers.0"),
        ([{"name": "tools"}], "mcpServers.0"),
        ([{"type": "http", "name": "x"}], "mcpServers.0.url: required"),
        ([{"type": "sse", "url": "https://mcp.example.com/v1"}], "mcpServers.0.name"),
        ([{"type": "acp", "name": "x", "serverId": "s"}], "mcpServers.0.type"),
        ([{"name": "x", "command": 5}], "mcpServers.0.command"),
        ([{"name": "x", "command": "a\x00b"}], "mcpServers.0"),
        (
            [
                {
                    "type": "http",
                    "name": "x",
                    "url": "https://mcp.example.com/v1",
                    "headers": [{"name": "a"}],
                }
            ],
            "mcpServers.0.headers.0.value: required",
        ),
        (["nope"], "mcpServers.0: no MCP server named 'nope'"),
        (["tools", "tools"], "mcpServers.1: duplicate"),
    ]
    for servers, words in bad:
        message = await refused(
            gw, "session/new", {"workspaceId": workspace_id, "mcpServers": servers}
        )
        assert words in message, (servers, message)
    # URLs that look like the allowed prefix but are not under it
    for url in (
        "https://mcp.example.com/v1x",
        "https://mcp.example.com/v2/x",
        "https://mcp.example.com/v1/../admin",
        "https://mcp.example.com/v1/%2e%2e/admin",
        "https://mcp.example.com/v1/a%2Fb",
        "https://mcp.example.com.evil.net/v1",
        "https://mcp.example.com@evil.net/v1",
        "http://mcp.example.com/v1",
        "https://mcp.example.com:8443/v1",
        "file:///etc/passwd",
        "not a url",
    ):
        entry = {"type": "http", "name": "x", "url": url}
        message = await refused(
            gw, "session/new", {"workspaceId": workspace_id, "mcpServers": [entry]}
        )
        assert message.startswith("Invalid mcpServers.0.url"), (url, message)
    assert await session_count(pool, workspace_id) == 0  # no half-written row

    # allowed: URLs under the prefix, the operator's servers by name
    entry = {"type": "http", "name": "ok", "url": "https://MCP.example.com/v1/tools"}
    sid = await new_session(
        gw, pool, {"workspaceId": workspace_id, "mcpServers": [entry, "tools"]}
    )
    row = await sessions.get_row(pool, uuid.UUID(sid))
    assert row.mcp_servers == [
        {
            "type": "http",
            "name": "ok",
            "url": "https://mcp.example.com/v1/tools",
            "headers": [],
        },
        "tools",
    ]


async def test_the_agent_gets_operator_servers_and_resumes_with_the_stored_list(
    make_gw, pool, workspace_id
):
    gw = await make_gw(allow_custom_commands=True)
    # ALLOW_CUSTOM_COMMANDS also lets a request name stdio servers
    own = {"name": "own", "command": "/usr/bin/true", "args": [], "env": []}
    sid = await new_session(gw, pool, probe(workspace_id, ["tools", own, "docs"]))
    expected = [
        {"name": "tools", **TOOLS},
        own,
        {"name": "docs", **DOCS},
    ]
    report = json.loads(await turn_text(gw, pool, sid, "mcp"))
    assert report["mcpServers"] == expected
    # stop the agent; the resume starts it with the stored, checked list
    manager = gw.app[SESSION_MANAGER]
    await manager.live[sid].stop(reason="idle")
    report = json.loads(await turn_text(gw, pool, sid, "mcp"))
    assert report["mcpServers"] == expected


async def test_resume_refuses_stored_servers_the_policy_refuses(
    make_gw, pool, workspace_id
):
    """A row written before the policy (or with ALLOW_CUSTOM_COMMANDS since turned off)."""
    gw = await make_gw()
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid,
                workspace_id=workspace_id,
                cwd=str(gw.app[SESSION_MANAGER].settings.cwd_root / workspace_id),
                provider="echo",
                mcp_servers=[SHELL],
            ),
        )
    reply = await rpc(gw, "session/prompt", {"sessionId": str(sid), "prompt": "hi"})
    assert "mcpServers.0: stdio MCP servers" in reply["error"]["message"]
    assert await wait_status(pool, str(sid), {"error"}) == "error"
    error = await pool.fetchval(
        "SELECT acp_error FROM sessions WHERE session_id = $1", sid
    )
    assert "mcpServers" in error


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"mcp_servers": "{not json"}, "MCP_SERVERS: not valid JSON"),
        ({"mcp_servers": '["tools"]'}, "MCP_SERVERS: must be a JSON object"),
        ({"mcp_servers": '{"x": {"type": "http"}}'}, "MCP_SERVERS.x.url: required"),
        ({"mcp_servers": "/no/such/file.json"}, "MCP_SERVERS: cannot read"),
        ({"mcp_allow_urls": "mcp.example.com"}, "MCP_ALLOW_URLS"),
    ],
)
def test_malformed_mcp_settings_refuse_to_start(make_settings, overrides, words):
    with pytest.raises(SystemExit) as exc:
        create_app(make_settings(**overrides))
    message = str(exc.value.code)
    assert words in message
    assert "\n" not in message


def test_mcp_servers_from_a_file(make_settings, tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(OPERATOR)
    policy = McpPolicy.from_settings(make_settings(mcp_servers=str(path)))
    assert policy.named == {
        "tools": {"name": "tools", **TOOLS},
        "docs": {"name": "docs", **DOCS},
    }
