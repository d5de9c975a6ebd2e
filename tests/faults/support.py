"""Fault-test helpers: processes in /proc (zombies, survivors) and "the gateway still works"."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from tests.gateway.rpcutil import ok, wait_ready

BAD = Path(__file__).parent / "agents" / "bad_agent.py"
WAIT = 20.0  # hang guard only


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command may contain spaces and parentheses: fields follow the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def zombie_children(parent: int | None = None) -> list[int]:
    """Pids in state Z whose parent is this process (nobody reaped them)."""
    parent = os.getpid() if parent is None else parent
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == "Z" and st[1] == parent:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


async def wait_no_zombies() -> None:
    """Children get reaped by asyncio's child watcher: wait for it, fail if they stay."""
    try:
        async with asyncio.timeout(5):
            while zombie_children():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"zombie children left: {zombie_children()}") from None


async def wait_gone(*pids: int) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while any(alive(p) for p in pids):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"processes still running: {[p for p in pids if alive(p)]}"
        ) from None


async def new_bad(gw: Any, workspace_id: str, *args: str) -> str:
    res = await ok(
        gw,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            "customCommand": sys.executable,
            "customArgs": [str(BAD), *args],
        },
    )
    return str(res["sessionId"])


async def assert_gateway_works(gw: Any, pool: Any, workspace_id: str) -> None:
    """/healthz answers and a fresh echo session runs a whole turn."""
    resp = await gw.get("/healthz")
    assert resp.status == 200
    res = await ok(gw, "session/new", {"workspaceId": workspace_id})
    sid = res["sessionId"]
    await wait_ready(pool, sid)
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "still here"})
    assert out["stopReason"] == "end_turn"
