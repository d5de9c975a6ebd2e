"""ACP client terminals and usage through the real gateway, query service and echo agent.

echo's `/terminal` always asks for the session's own cwd, so a cwd escape and the
environment are driven through the raw fake agent (tests/gateway/agents/fake_agent.py),
whose `terminal <json>` prompt sends any terminal/create it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.gateway.app import create_app
from services.query.app import create_app as create_query_app
from shared import providers
from shared.db import sessions
from tests.gateway.conftest import wait_fanout_ready
from tests.gateway.rpcutil import events, kinds, ok, wait_events, wait_ready

WAIT = 30.0  # hang guard only
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).parent / "agents" / "fake_agent.py"


@pytest.fixture(autouse=True)
def echo_of_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawn the echo agent of the checkout under test.

    The gateway gives agents a clean environment (no PYTHONPATH), so `-m services.echo`
    would import whichever checkout is installed; put this one first on sys.path.
    """
    echo = providers.PROVIDERS["echo"]
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
        "runpy.run_module('services.echo', run_name='__main__')"
    )
    monkeypatch.setitem(
        providers.PROVIDERS, "echo", dataclasses.replace(echo, args=("-c", code))
    )


@pytest.fixture
async def clients(make_settings, aiohttp_client, cwd_root):
    settings = make_settings(allow_custom_commands=True)
    gateway = await aiohttp_client(create_app(settings))
    await wait_fanout_ready(gateway.app)
    query = await aiohttp_client(create_query_app(settings))
    return gateway, query, settings


async def new_echo(gateway, pool, workspace_id) -> str:
    sid: str = (await ok(gateway, "session/new", {"workspaceId": workspace_id}))[
        "sessionId"
    ]
    await wait_ready(pool, sid)
    return sid


def updates_of(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["update"] for e in evs if e["update"]["sessionUpdate"] == kind]


def agent_text(evs: list[dict[str, Any]]) -> str:
    return "".join(u["content"]["text"] for u in updates_of(evs, "agent_message_chunk"))


async def session_cwd(pool, sid: str) -> Path:
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row is not None
    return Path(row.cwd).resolve()


def processes_in(cwd: Path, argv: list[str]) -> list[int]:
    """Live (non-zombie) processes running exactly `argv` with `cwd` as working dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")[:-1]
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            where = Path(os.readlink(f"/proc/{entry}/cwd"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and where == cwd and cmdline == [a.encode() for a in argv]:
            found.append(int(entry))
    return found


async def wait_processes(cwd: Path, argv: list[str], *, present: bool) -> list[int]:
    async with asyncio.timeout(WAIT):
        while bool(pids := processes_in(cwd, argv)) != present:
            await asyncio.sleep(0.05)
    return pids


# -- echo /terminal -------------------------------------------------------------------


async def test_terminal_echo_hello(clients, pool, workspace_id) -> None:
    gateway, query, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    reply = await ok(
        gateway, "session/prompt", {"sessionId": sid, "prompt": "/terminal echo hello"}
    )
    assert reply == {"stopReason": "end_turn"}
    evs = await events(pool, sid)
    text = agent_text(evs)
    assert "hello" in text
    assert "exit 0" in text
    outputs = updates_of(evs, "terminal_output")
    assert outputs, kinds(evs)
    assert "".join(o["data"] for o in outputs) == "hello\n"
    assert {o["terminalId"] for o in outputs} == {outputs[0]["terminalId"]}
    turn = kinds(evs)[kinds(evs).index("user_message") :]
    assert turn.index("terminal_output") < turn.index("turn_complete")
    history = await (await query.get(f"/api/sessions/{sid}/history")).json()
    assert updates_of(history["history"], "terminal_output") == outputs


async def start_sleep(gateway, pool, workspace_id) -> tuple[str, asyncio.Task, Path]:
    """An echo turn blocked on `/terminal sleep 3600`; returns once the sleep runs."""
    sid = await new_echo(gateway, pool, workspace_id)
    cwd = await session_cwd(pool, sid)
    prompt = asyncio.create_task(
        ok(
            gateway,
            "session/prompt",
            {"sessionId": sid, "prompt": "/terminal sleep 3600"},
        )
    )
    await wait_processes(cwd, ["sleep", "3600"], present=True)
    return sid, prompt, cwd


async def test_cancel_kills_the_terminal(clients, pool, workspace_id) -> None:
    gateway, _, _ = clients
    sid, prompt, cwd = await start_sleep(gateway, pool, workspace_id)
    assert await ok(gateway, "session/cancel", {"sessionId": sid}) == {}
    async with asyncio.timeout(WAIT):
        assert await prompt == {"stopReason": "cancelled"}
    await wait_processes(cwd, ["sleep", "3600"], present=False)
    # the session goes on: the next terminal works
    reply = await ok(
        gateway, "session/prompt", {"sessionId": sid, "prompt": "/terminal echo again"}
    )
    assert reply == {"stopReason": "end_turn"}


async def test_disconnect_kills_the_terminal(clients, pool, workspace_id) -> None:
    gateway, query, _ = clients
    sid, prompt, cwd = await start_sleep(gateway, pool, workspace_id)
    resp = await query.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200, await resp.text()
    await wait_processes(cwd, ["sleep", "3600"], present=False)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(prompt, return_exceptions=True)


async def test_delete_kills_the_terminal(clients, pool, workspace_id) -> None:
    gateway, query, _ = clients
    sid, prompt, cwd = await start_sleep(gateway, pool, workspace_id)
    resp = await query.delete(f"/api/sessions/{sid}")
    assert resp.status == 200, await resp.text()
    await wait_processes(cwd, ["sleep", "3600"], present=False)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(prompt, return_exceptions=True)


# -- confinement and environment, through a raw agent --------------------------------


async def fake_terminal(gateway, pool, workspace_id, params: dict[str, Any]):
    """Run one terminal/create (+ wait, output, release) from the fake agent."""
    created = await ok(
        gateway,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            "customCommand": sys.executable,
            "customArgs": [str(FAKE)],
        },
    )
    sid = created["sessionId"]
    await wait_ready(pool, sid)
    await ok(
        gateway,
        "session/prompt",
        {"sessionId": sid, "prompt": f"terminal {json.dumps(params)}"},
    )
    evs = await events(pool, sid)
    return sid, json.loads(agent_text(evs)[: -len("ok")]), evs


async def test_cwd_outside_the_session_is_refused(clients, pool, workspace_id) -> None:
    gateway, _, _ = clients
    for escape in ("/", ".."):
        _, said, evs = await fake_terminal(
            gateway, pool, workspace_id, {"command": "pwd", "cwd": escape}
        )
        error = said["create"]["error"]
        assert error["code"] == -32602
        assert "cwd" in error["message"]
        assert "exit" not in said
        assert updates_of(evs, "terminal_output") == []


async def test_terminal_runs_in_the_session_cwd_with_the_agents_env(
    clients, pool, workspace_id
) -> None:
    gateway, _, settings = clients
    script = "import os, json; print(os.getcwd()); print(json.dumps(dict(os.environ)))"
    sid, said, evs = await fake_terminal(
        gateway,
        pool,
        workspace_id,
        {
            "command": sys.executable,
            "args": ["-c", script],
            "env": [
                {"name": "FOO", "value": "bar"},
                {"name": "HOME", "value": "/elsewhere"},
            ],
        },
    )
    assert said["exit"]["result"] == {"exitCode": 0, "signal": None}
    where, env_line = said["output"]["result"]["output"].splitlines()
    assert Path(where) == await session_cwd(pool, sid)
    env = json.loads(env_line)
    assert env["FOO"] == "bar"
    assert env["HOME"] == str(settings.agents_home_root / sid)  # the agent's own
    assert "DATABASE_URL" not in env
    assert said["release"]["result"] == {}
    recorded = "".join(o["data"] for o in updates_of(evs, "terminal_output"))
    assert recorded == said["output"]["result"]["output"]


async def test_output_byte_limit_through_acp(clients, pool, workspace_id) -> None:
    gateway, _, _ = clients
    _, said, _ = await fake_terminal(
        gateway,
        pool,
        workspace_id,
        {"command": "echo", "args": ["0123456789"], "outputByteLimit": 4},
    )
    assert said["output"]["result"] == {
        "output": "789\n",
        "truncated": True,
        "exitStatus": {"exitCode": 0, "signal": None},
    }


async def test_gateway_advertises_terminals(clients, pool, workspace_id) -> None:
    gateway, _, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "/terminal true"})
    text = agent_text(await events(pool, sid))
    assert "no terminal" not in text
    assert text == "exit 0"


# -- usage ----------------------------------------------------------------------------


async def test_usage_is_stored_on_turn_complete_and_as_events(
    clients, pool, workspace_id
) -> None:
    gateway, query, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    usage = {"totalTokens": 30, "inputTokens": 20, "outputTokens": 10}
    reply = await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "/usage"})
    assert reply == {"stopReason": "end_turn", "usage": usage}
    evs = await wait_events(pool, sid, lambda e: "turn_complete" in kinds(e))
    assert updates_of(evs, "turn_complete") == [
        {"sessionUpdate": "turn_complete", "stopReason": "end_turn", "usage": usage}
    ]
    history = (await (await query.get(f"/api/sessions/{sid}/history")).json())[
        "history"
    ]
    assert updates_of(history, "usage_update") == [
        {
            "sessionUpdate": "usage_update",
            "used": 1200,
            "size": 200000,
            "cost": {"amount": 0.01, "currency": "USD"},
        }
    ]
    turn = kinds(history)[kinds(history).index("user_message") :]
    assert turn == ["user_message", "usage_update", "turn_complete"]
