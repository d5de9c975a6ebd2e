"""The terminals module on its own: confinement, environment, bounded output, events, kills.

Real processes, no gateway: `Terminals` is what the ACP client object calls for an agent's
`terminal/*` requests (the end-to-end paths are in test_terminals_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from acp.exceptions import RequestError

from services.gateway import terminals
from services.gateway.terminals import (
    OutputBuffer,
    Terminals,
    exit_status,
    resolve_cwd,
    terminal_env,
)

WAIT = 20.0  # hang guard only

AGENT_ENV = {"PATH": os.environ["PATH"], "HOME": "/agent/home", "LANG": "C.UTF-8"}


# -- pure logic -----------------------------------------------------------------------


def test_output_buffer_keeps_everything_under_the_limit() -> None:
    buf = OutputBuffer(10)
    buf.append("hello")
    buf.append(" you")
    assert buf.text == "hello you"
    assert not buf.truncated


def test_output_buffer_drops_from_the_start() -> None:
    buf = OutputBuffer(5)
    buf.append("abc")
    buf.append("defg")
    assert buf.text == "cdefg"
    assert buf.truncated


def test_output_buffer_cuts_on_a_character_boundary() -> None:
    buf = OutputBuffer(4)
    buf.append("aé€")  # 1 + 2 + 3 bytes: keeping 4 would start inside "é"
    assert buf.text == "€"
    assert len(buf) == 3
    assert buf.truncated


def test_output_buffer_of_zero_keeps_nothing() -> None:
    buf = OutputBuffer(0)
    buf.append("x")
    assert buf.text == ""
    assert buf.truncated


def test_resolve_cwd_default_relative_and_absolute(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    root = tmp_path.resolve()
    assert resolve_cwd(tmp_path, None) == root
    assert resolve_cwd(tmp_path, "sub") == root / "sub"
    assert resolve_cwd(tmp_path, str(tmp_path / "sub")) == root / "sub"
    assert resolve_cwd(tmp_path, str(tmp_path / "sub" / "..")) == root


@pytest.mark.parametrize("escape", ["..", "/", "/etc", "sub/../..", "link"])
def test_resolve_cwd_refuses_escapes(tmp_path: Path, escape: str) -> None:
    session = tmp_path / "session"
    (session / "sub").mkdir(parents=True)
    (session / "link").symlink_to(tmp_path)  # a symlink out of the session's cwd
    with pytest.raises(RequestError) as err:
        resolve_cwd(session, escape)
    assert err.value.code == -32602
    assert "cwd" in str(err.value)
    assert "outside" in str(err.value)


def test_resolve_cwd_refuses_a_file_and_a_nul(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for bad in ("file", "missing", "a\0b"):
        with pytest.raises(RequestError) as err:
            resolve_cwd(tmp_path, bad)
        assert err.value.code == -32602
        assert "cwd" in str(err.value)


def test_terminal_env_adds_but_never_replaces() -> None:
    env = terminal_env(
        AGENT_ENV,
        [
            ("FOO", "bar"),
            ("HOME", "/elsewhere"),
            ("PATH", "/evil"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("DYLD_INSERT_LIBRARIES", "/tmp/x.dylib"),
        ],
    )
    assert env == {**AGENT_ENV, "FOO": "bar"}


@pytest.mark.parametrize("name", ["", "A=B", "A\0B"])
def test_terminal_env_refuses_bad_names(name: str) -> None:
    with pytest.raises(RequestError) as err:
        terminal_env(AGENT_ENV, [(name, "x")])
    assert err.value.code == -32602
    assert "env" in str(err.value)


def test_exit_status() -> None:
    assert exit_status(0) == {"exitCode": 0, "signal": None}
    assert exit_status(3) == {"exitCode": 3, "signal": None}
    assert exit_status(-9) == {"exitCode": None, "signal": "SIGKILL"}


# -- the class, with real processes ---------------------------------------------------


class Held:
    """A Terminals instance and the events it recorded."""

    def __init__(self, cwd: Path, **limits: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.terms = Terminals(
            cwd,
            AGENT_ENV,
            self.events.append,
            output_limit=limits.get("output_limit", 1 << 20),
            max_terminals=limits.get("max_terminals", 8),
        )

    def output_events(self, terminal_id: str) -> list[dict[str, Any]]:
        return [
            e["update"]
            for e in self.events
            if e["update"]["sessionUpdate"] == "terminal_output"
            and e["update"]["terminalId"] == terminal_id
        ]

    async def run(self, command: str, *args: str, **kw: Any) -> str:
        created = await self.terms.create(command, list(args), **kw)
        tid: str = created["terminalId"]
        async with asyncio.timeout(WAIT):
            await self.terms.wait_for_exit(tid)
        return tid


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[Held]:
    h = Held(tmp_path)
    yield h
    await h.terms.close()


async def test_runs_in_the_session_cwd_and_records_output(
    held: Held, tmp_path: Path
) -> None:
    tid = await held.run("pwd")
    out = held.terms.output(tid)
    assert out == {
        "output": f"{tmp_path.resolve()}\n",
        "truncated": False,
        "exitStatus": {"exitCode": 0, "signal": None},
    }
    assert held.output_events(tid) == [
        {
            "sessionUpdate": "terminal_output",
            "terminalId": tid,
            "data": f"{tmp_path.resolve()}\n",
        }
    ]


async def test_arguments_are_never_read_by_a_shell(held: Held, tmp_path: Path) -> None:
    tid = await held.run("echo", "$HOME; touch pwned", "`id`")
    assert held.terms.output(tid)["output"] == "$HOME; touch pwned `id`\n"
    assert not (tmp_path / "pwned").exists()


async def test_relative_cwd_and_exit_code(held: Held, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    tid = await held.run(
        sys.executable,
        "-c",
        "import os,sys; print(os.getcwd()); sys.exit(4)",
        cwd="sub",
    )
    out = held.terms.output(tid)
    assert out["output"] == f"{(tmp_path / 'sub').resolve()}\n"
    assert out["exitStatus"] == {"exitCode": 4, "signal": None}


async def test_escaping_cwd_is_refused_and_nothing_runs(
    held: Held, tmp_path: Path
) -> None:
    with pytest.raises(RequestError) as err:
        await held.terms.create("touch", ["escaped"], cwd="..")
    assert err.value.code == -32602
    assert "cwd" in str(err.value)
    assert len(held.terms) == 0
    assert not (tmp_path.parent / "escaped").exists()


async def test_environment_is_the_agents_plus_new_entries(held: Held) -> None:
    tid = await held.run(
        sys.executable,
        "-c",
        "import os, json; print(json.dumps(dict(os.environ)))",
        env=[("FOO", "bar"), ("HOME", "/elsewhere"), ("LD_PRELOAD", "x.so")],
    )
    env = json.loads(held.terms.output(tid)["output"])
    env.pop("PWD", None)  # some shells and pythons add it; we do not
    env.pop("LC_CTYPE", None)  # python may coerce the locale
    assert env == {**AGENT_ENV, "FOO": "bar"}


async def test_stdout_and_stderr_are_merged(held: Held) -> None:
    tid = await held.run(
        sys.executable,
        "-c",
        "import sys; print('out', flush=True); print('err', file=sys.stderr)",
    )
    assert held.terms.output(tid)["output"] == "out\nerr\n"


async def test_output_byte_limit_truncates_from_the_start(held: Held) -> None:
    tid = await held.run(
        sys.executable,
        "-c",
        "print('a' * 100 + 'é' + 'tail', end='')",
        output_byte_limit=6,
    )
    out = held.terms.output(tid)
    assert out["truncated"] is True
    assert out["output"] == "étail"  # 6 bytes; one more would split "é"


async def test_gateway_limit_caps_a_larger_request(tmp_path: Path) -> None:
    h = Held(tmp_path, output_limit=4)
    try:
        tid = await h.run("echo", "abcdefgh", output_byte_limit=1000)
        assert h.terms.output(tid) | {"exitStatus": None} == {
            "output": "fgh\n",
            "truncated": True,
            "exitStatus": None,
        }
    finally:
        await h.terms.close()


async def test_events_are_bounded_and_say_what_they_skipped(held: Held) -> None:
    size = 5 * terminals.EVENT_MAX_CHARS
    tid = await held.run(sys.executable, "-c", f"print('x' * {size}, end='')")
    events = held.output_events(tid)
    assert all(len(e["data"]) <= terminals.EVENT_MAX_CHARS for e in events)
    recorded = sum(len(e["data"]) + e.get("skipped", 0) for e in events)
    assert recorded == size  # every character is either recorded or counted
    assert len(held.terms.output(tid)["output"]) == size


async def test_command_not_found_names_command(held: Held) -> None:
    with pytest.raises(RequestError) as err:
        await held.terms.create("no-such-command-anywhere", [])
    assert err.value.code == -32602
    assert "command" in str(err.value)


async def test_unknown_terminal_id_names_it(held: Held) -> None:
    calls = [
        lambda: held.terms.wait_for_exit("term_nope"),
        lambda: held.terms.kill("term_nope"),
        lambda: held.terms.release("term_nope"),
    ]
    for call in calls:
        with pytest.raises(RequestError) as err:
            await call()
        assert err.value.code == -32602
        assert "terminalId" in str(err.value)
    with pytest.raises(RequestError) as err:
        held.terms.output("term_nope")
    assert "terminalId" in str(err.value)


async def test_kill_keeps_the_terminal_and_release_forgets_it(held: Held) -> None:
    created = await held.terms.create("sleep", ["60"])
    tid = created["terminalId"]
    assert "exitStatus" not in held.terms.output(tid)
    assert await held.terms.kill(tid) == {}
    async with asyncio.timeout(WAIT):
        status = await held.terms.wait_for_exit(tid)
    assert status == {"exitCode": None, "signal": "SIGKILL"}
    assert held.terms.output(tid)["exitStatus"] == status
    assert await held.terms.release(tid) == {}
    with pytest.raises(RequestError):
        held.terms.output(tid)


async def test_cap_on_terminals_held(tmp_path: Path) -> None:
    h = Held(tmp_path, max_terminals=2)
    try:
        first = (await h.terms.create("sleep", ["60"]))["terminalId"]
        await h.terms.create("sleep", ["60"])
        with pytest.raises(RequestError) as err:
            await h.terms.create("sleep", ["60"])
        assert err.value.code == -32000
        assert "at most 2" in str(err.value)
        await h.terms.release(first)  # releasing frees a place
        await h.terms.create("true", [])
    finally:
        await h.terms.close()


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_close_kills_the_whole_process_group(tmp_path: Path) -> None:
    h = Held(tmp_path)
    # a child that starts a grandchild and prints its pid: both must die on close
    script = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen(['sleep', '60']);"
        "print(p.pid, flush=True); time.sleep(60)"
    )
    created = await h.terms.create(sys.executable, ["-c", script])
    tid = created["terminalId"]
    async with asyncio.timeout(WAIT):
        while not h.terms.output(tid)["output"].strip():
            await asyncio.sleep(0.02)
    grandchild = int(h.terms.output(tid)["output"])
    waiter = asyncio.create_task(h.terms.wait_for_exit(tid))
    await asyncio.sleep(0)  # the waiter is waiting when the session stops
    await h.terms.close()
    async with asyncio.timeout(WAIT):
        assert (await waiter)["signal"] == "SIGKILL"
        while alive(grandchild):
            await asyncio.sleep(0.02)
    with pytest.raises(RequestError) as err:
        await h.terms.create("true", [])
    assert err.value.code == -32000


async def test_runs_in_its_own_process_group(held: Held) -> None:
    tid = await held.run(
        sys.executable, "-c", "import os; print(os.getpgid(0) == os.getpid())"
    )
    assert held.terms.output(tid)["output"] == "True\n"
