"""The realagents stack: real gateways and a query service as processes, agents offline.

Each test gets its own scripted model endpoint (modelserver.py, on a Unix socket), a
DATA_DIR, gateways started as `python -m services.gateway` with the operator's settings
(CLAUDE_AGENT_ACP_BIN / OPENCODE_BIN pointing at a wrapper that runs the pinned agent
under `unshare -n` through netns_relay.py, AGENT_ENV_* naming the credentials, an
OPENCODE_CONFIG), and talks to them over HTTP only: POST /api/acp, the SSE stream, and the
query service's /history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shared.providers import AGENTS_BIN
from tests.realagents.modelserver import ModelServer, Tool
from tests.scaleout.support import ROOT, Proc, Subscriber, free_port, stop, wait_ready

RELAY = Path(__file__).with_name("netns_relay.py")
MODEL_PORT = 8765  # inside each agent's own network namespace: never collides
WAIT = 120.0  # hang guard only: the agents are slow on a loaded 2-core box
INSTALL_HINT = "run scripts/install-agents (npm ci into agents/node_modules)"

WRAPPER = """#!/bin/sh
# the agent with no network but loopback; the model endpoint is its only way out
exec unshare -n -- {python} {relay} {socket} {port} -- {binary} "$@"
"""


@dataclass(frozen=True)
class Agent:
    """One real agent: how to find it, configure it, and script its tools."""

    provider: str
    binary: str
    bin_setting: str
    # tool calls as the agent's model API names them
    read: Callable[[str], Tool]
    edit: Callable[[str, str, str], Tool]
    bash: Callable[[str], Tool]
    plan: Callable[[list[tuple[str, str]]], Tool] | None
    env: Callable[[Path, str | None], dict[str, str]]  # (test dir, API key or none)


def _claude_env(tmp: Path, api_key: str | None) -> dict[str, str]:
    env = {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{MODEL_PORT}",
        "CLAUDE_CODE_MAX_RETRIES": "0",  # tests only: a refused key fails at once
        # this machine's own trap, made explicit: the gateway turns `yes` into `1`
        "IS_SANDBOX": "yes",
        "AGENT_ENV_CLAUDE": "ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL,"
        "CLAUDE_CODE_MAX_RETRIES,IS_SANDBOX",
    }
    if api_key is not None:
        env["ANTHROPIC_API_KEY"] = api_key
    return env


def opencode_config() -> dict[str, Any]:
    """An operator's opencode.json for an OpenAI-compatible provider (our endpoint)."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "scripted": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Scripted",
                "options": {
                    "baseURL": f"http://127.0.0.1:{MODEL_PORT}/v1",
                    "apiKey": "{env:SCRIPTED_API_KEY}",
                },
                "models": {
                    "scripted-model": {
                        "name": "Scripted",
                        "tool_call": True,
                        # a context size makes opencode send usage_update
                        "limit": {"context": 200000, "output": 8192},
                    },
                    # a second model to switch to (session/set_config_option)
                    "scripted-large": {
                        "name": "Scripted Large",
                        "tool_call": True,
                        "limit": {"context": 400000, "output": 8192},
                    },
                },
            }
        },
        "model": "scripted/scripted-model",
        "small_model": "scripted/scripted-model",
        "enabled_providers": ["scripted"],
        "autoupdate": False,
        "share": "disabled",
        # the default allows everything; ask for edits and for commands that are not
        # read-only, like claude does
        "permission": {
            "edit": "ask",
            "bash": {"*": "ask", "cat *": "allow", "ls *": "allow", "sleep *": "allow"},
        },
    }


def _opencode_env(tmp: Path, api_key: str | None) -> dict[str, str]:
    config = tmp / "opencode.json"
    config.write_text(json.dumps(opencode_config(), indent=2))
    env = {
        "OPENCODE_CONFIG": str(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "AGENT_ENV_OPENCODE": "SCRIPTED_API_KEY,OPENCODE_DISABLE_MODELS_FETCH",
    }
    if api_key is not None:
        env["SCRIPTED_API_KEY"] = api_key
    return env


CLAUDE = Agent(
    provider="claude",
    binary="claude-agent-acp",
    bin_setting="CLAUDE_AGENT_ACP_BIN",
    read=lambda path: Tool("Read", {"file_path": path}),
    edit=lambda path, old, new: Tool(
        "Edit", {"file_path": path, "old_string": old, "new_string": new}
    ),
    bash=lambda cmd: Tool("Bash", {"command": cmd, "description": "run " + cmd}),
    plan=lambda items: Tool(
        "TodoWrite",
        {
            "todos": [
                {"content": c, "status": s, "activeForm": c + " (doing)"}
                for c, s in items
            ]
        },
    ),
    env=_claude_env,
)

OPENCODE = Agent(
    provider="opencode",
    binary="opencode",
    bin_setting="OPENCODE_BIN",
    read=lambda path: Tool("read", {"filePath": path}),
    edit=lambda path, old, new: Tool(
        "edit", {"filePath": path, "oldString": old, "newString": new}
    ),
    bash=lambda cmd: Tool("bash", {"command": cmd, "description": "run " + cmd}),
    plan=None,  # opencode 1.18.33 never sends a `plan` update (todowrite is a tool call)
    env=_opencode_env,
)

AGENTS = {a.provider: a for a in (CLAUDE, OPENCODE)}


# never from the developer's own environment: each test says what the agents get
_NOT_INHERITED = ("ANTHROPIC_", "OPENAI_", "CLAUDE_", "OPENCODE_", "AGENT_ENV_")


def start_service(
    module: str, name: str, port: int, env: dict[str, str], logdir: Path
) -> Proc:
    """tests.scaleout.support.start_service with a clean environment."""
    log = logdir / f"{name}.log"
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)},
        **env,
        "INSTANCE_ID": name,
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, port, popen, log)


def missing_agents() -> list[str]:
    return [a.binary for a in AGENTS.values() if not (AGENTS_BIN / a.binary).exists()]


def unshare_problem() -> str | None:
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "--", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "`unshare -n` failed (needs root or user namespaces): "
            + probe.stderr.strip()
        )
    return None


def readiness_problem() -> str | None:
    """Why the suite cannot run here (it then fails with this), else None."""
    missing = missing_agents()
    if missing:
        return f"{', '.join(missing)} not installed in {AGENTS_BIN}; {INSTALL_HINT}"
    return unshare_problem()


def write_wrapper(path: Path, binary: Path, socket: Path) -> Path:
    path.write_text(
        WRAPPER.format(
            python=sys.executable,
            relay=RELAY,
            socket=socket,
            port=MODEL_PORT,
            binary=binary,
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@dataclass
class Stack:
    """Gateways + a query service for one test, and the client side of the API."""

    agent: Agent
    model: ModelServer
    base_env: dict[str, str]
    data_dir: Path
    logdir: Path
    workspace_id: str
    http: aiohttp.ClientSession
    procs: list[Proc] = field(default_factory=list)
    query: Proc | None = None
    subscribers: list[Subscriber] = field(default_factory=list)
    credentials: str = "valid"  # or "missing" / "refused" (stack_without_credentials)
    _ids: int = 0

    async def gateway(self, name: str, **env: str) -> Proc:
        proc = start_service(
            "services.gateway",
            name,
            free_port(),
            {**self.base_env, **env},
            self.logdir,
        )
        self.procs.append(proc)
        await wait_ready(self.http, proc.url, "/readyz")
        return proc

    async def query_service(self) -> Proc:
        if self.query is None:
            proc = start_service(
                "services.query", "query", free_port(), self.base_env, self.logdir
            )
            self.procs.append(proc)
            await wait_ready(self.http, proc.url, "/readyz")
            self.query = proc
        return self.query

    async def call(
        self, gw: Proc, method: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The JSON-RPC reply (result or error) of one POST /api/acp."""
        self._ids += 1
        rid = (
            self._ids
        )  # calls run concurrently (a prompt while answering a permission)
        body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        timeout = aiohttp.ClientTimeout(total=WAIT * 2)
        async with self.http.post(gw.url + "/api/acp", json=body, timeout=timeout) as r:
            assert r.status == 200, await r.text()
            reply: dict[str, Any] = await r.json()
        assert reply["id"] == rid
        return reply

    async def ok(self, gw: Proc, method: str, params: dict[str, Any]) -> Any:
        reply = await self.call(gw, method, params)
        assert "error" not in reply, (reply, self.tails())
        return reply["result"]

    async def new_session(self, gw: Proc, cwd: Path, **extra: Any) -> str:
        cwd.mkdir(parents=True, exist_ok=True)
        res = await self.ok(
            gw,
            "session/new",
            {
                "workspaceId": self.workspace_id,
                "provider": self.agent.provider,
                "cwd": str(cwd),
                **extra,
            },
        )
        return str(res["sessionId"])

    def subscribe(self, gw: Proc, sid: str) -> Subscriber:
        """An SSE reader from event 1 (`replay=all`), reconnecting with Last-Event-ID."""
        sub = Subscriber(self.http, gw.url, sid)
        sub.start()
        self.subscribers.append(sub)
        return sub

    async def wait_ready(self, sub: Subscriber) -> None:
        def settled(s: Subscriber) -> bool:
            return any(
                e["update"]["sessionUpdate"] == "acp_status"
                and e["update"].get("status") in ("ready", "error")
                for _, e in s.events
            )

        await wait_for(sub, settled)
        status = [
            e["update"]
            for _, e in sub.events
            if e["update"]["sessionUpdate"] == "acp_status"
        ]
        assert status[-1]["status"] == "ready", (status, self.tails())

    async def history(self, sid: str) -> list[dict[str, Any]]:
        query = await self.query_service()
        async with self.http.get(f"{query.url}/api/sessions/{sid}/history") as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        return list(body["history"])

    def tails(self) -> str:
        """What the processes logged, for assertion messages."""
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)

    async def close(self) -> None:
        for sub in self.subscribers:
            await sub.close()
        for proc in self.procs:
            await asyncio.to_thread(stop, proc)
        kill_agents_under(self.data_dir)


async def wait_for(sub: Subscriber, predicate: Callable[[Subscriber], bool]) -> None:
    """Subscriber.wait_for with the realagents' patience (slow agents, loaded box)."""
    assert sub.task is not None
    async with asyncio.timeout(WAIT):
        while not predicate(sub):
            sub.changed.clear()
            waiter = asyncio.ensure_future(sub.changed.wait())
            await asyncio.wait({waiter, sub.task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if sub.task.done():
                sub.task.result()


def updates(sub: Subscriber, kind: str | None = None) -> list[dict[str, Any]]:
    return [
        e["update"]
        for _, e in sub.events
        if kind is None or e["update"]["sessionUpdate"] == kind
    ]


def agent_text(sub: Subscriber, after: int = 0) -> str:
    """The agent's message chunks (after event `after`), joined."""
    return "".join(
        e["update"]["content"].get("text", "")
        for n, e in sub.events
        if n > after and e["update"]["sessionUpdate"] == "agent_message_chunk"
    )


def waiting_tool_call(sub: Subscriber) -> dict[str, Any] | None:
    """The newest permission request (a `tool_call` with status waiting) not answered yet."""
    answered = {
        u["toolCallId"]
        for u in updates(sub, "tool_call_update")
        if "permission" in (u.get("_meta") or {})
    }
    for u in reversed(updates(sub, "tool_call")):
        if u.get("status") == "waiting" and u["toolCallId"] not in answered:
            return u
    return None


def processes_under(root: Path) -> list[int]:
    """Pids whose working directory is inside `root` (agents, their tools, relays)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == root or root in cwd.parents:
                found.append(int(entry.name))
    return found


def kill_agents_under(root: Path) -> None:
    """The agent processes of this test's sessions (by pid), e.g. after a gateway was
    killed: the way a pod's death takes its children with it."""
    for pid in processes_under(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
