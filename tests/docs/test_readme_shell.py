"""README's shell blocks marked `<!-- run -->`, run as a reader would paste them.

A live system is started here: the gateway and the query service (real Postgres and Redis)
behind the dev origin. The blocks run in order in one bash, so `SID=…` and a background job
carry from one to the next. Only what a reader would type differently is replaced: the origin's
address for `http://localhost:3000`, the session id for `<id>` and the waiting tool call's id for
`<toolCallId>`. Every curl must answer 2xx, and a `# → {…}` line under a command must match its
answer (`…` and `<…>` in it match anything).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.settings import Settings
from tests.browser.conftest import live_stack

ROOT = Path(__file__).resolve().parents[2]
README_ORIGIN = "http://localhost:3000"
RUN_MARK = "<!-- run -->"
DONE = "__README_DONE__"
HTTP = "__HTTP__"
WAIT = 60.0

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Command:
    text: str  # one shell command, continuation lines joined
    expect: str | None  # the `# → …` line under it, without the arrow


def runnable_blocks(readme: str) -> list[str]:
    """The fenced bash blocks right after a `<!-- run -->` line."""
    pattern = re.escape(RUN_MARK) + r"\n```(?:bash|sh)\n(.*?)```"
    return re.findall(pattern, readme, re.S)


def commands(block: str) -> list[Command]:
    out: list[Command] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        if not pending and stripped.startswith("# →"):
            assert out, f"an answer line with no command above it: {line}"
            out[-1] = Command(out[-1].text, stripped.removeprefix("# →").strip())
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(Command(pending + line, None))
        pending = ""
    assert not pending, "a block ends inside a continued line"
    return out


def test_readme_marks_its_runnable_blocks() -> None:
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 4
    text = "\n".join(blocks)
    for needle in ("session/new", "session/prompt", "respond_user_input", "/fail"):
        assert needle in text
    for block in blocks:
        for command in commands(block):
            if "curl" in command.text and "-d '" in command.text:
                # a JSON body without its Content-Type is refused (415)
                assert "Content-Type: application/json" in command.text, command


def matches(expected: Any, actual: Any) -> bool:
    """`expected` is a sub-shape of `actual`; a string with `…` or `<…>` matches anything."""
    if isinstance(expected, str) and ("…" in expected or re.search(r"<\w+>", expected)):
        return True
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and matches(value, actual[key])
            for key, value in expected.items()
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and all(
            matches(e, a) for e, a in zip(expected, actual, strict=False)
        )
    return bool(expected == actual)


class Shell:
    """One bash that keeps its variables and jobs; each command's output up to a marker."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cwd: Path) -> Shell:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        shell = cls(proc)
        # every curl reports its status on a line of its own, after its body
        await shell.run(
            f"curl() {{ command curl -sS -w '\\n{HTTP} %{{http_code}}\\n' \"$@\"; }}"
        )
        return shell

    async def run(self, command: str) -> tuple[int, str]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{command}\nprintf '\\n{DONE} %s\\n' $?\n".encode())
        await self.proc.stdin.drain()
        lines: list[str] = []
        async with asyncio.timeout(WAIT):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, f"bash ended during: {command}\n{''.join(lines)}"
                line = raw.decode()
                if line.startswith(DONE):
                    return int(line.split()[1]), "".join(lines)
                lines.append(line)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def http_answers(output: str) -> list[tuple[int, str]]:
    """(status, body) of each curl in `output`."""
    answers: list[tuple[int, str]] = []
    body: list[str] = []
    for line in output.splitlines():
        if line.startswith(HTTP):
            answers.append((int(line.split()[1]), "\n".join(body).strip()))
            body = []
        else:
            body.append(line)
    return answers


@pytest.fixture
async def origin(
    make_settings: Callable[..., Settings], cwd_root: Path
) -> AsyncIterator[str]:
    """Gateway + query service behind the dev origin, as the browser tests run them."""
    async with live_stack(make_settings) as stack:
        yield stack.origin


async def _waiting_tool_call(origin: str, session_id: str) -> str:
    """The id of the session's tool call that waits for a permission (what a reader looks up)."""
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(WAIT):
            while True:
                url = f"{origin}/api/sessions/{session_id}/history"
                async with http.get(url) as resp:
                    events = (await resp.json())["history"]
                for event in events:
                    update = event.get("update", event)
                    if (
                        update.get("sessionUpdate") == "tool_call"
                        and update.get("status") == "waiting"
                    ):
                        return str(update["toolCallId"])
                await asyncio.sleep(0.1)


async def test_readme_shell_blocks_run_against_a_live_system(
    origin: str, tmp_path: Path
) -> None:
    assert shutil.which("curl"), "the README's examples need curl"
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    shell = await Shell.start(tmp_path)
    session_id: str | None = None
    ran: list[str] = []
    outputs = ""
    try:
        for block in blocks:
            for command in commands(block):
                text = command.text.replace(README_ORIGIN, origin)
                if "<id>" in text:
                    assert session_id, f"{text!r} needs a session made before it"
                    text = text.replace("<id>", session_id)
                if "<toolCallId>" in text:
                    assert session_id
                    tool = await _waiting_tool_call(origin, session_id)
                    text = text.replace("<toolCallId>", tool)
                code, output = await shell.run(text)
                ran.append(text)
                outputs += output
                streaming = "-N" in text.split() and "--max-time" in text
                background = text.rstrip().endswith("&")
                # a stream cut by --max-time exits 28 (time-out), as documented
                assert code in ((0, 28) if streaming else (0,)), (text, code, output)
                answers = http_answers(output)
                if text.lstrip().startswith("curl") and not background:
                    assert answers, (text, output)
                for status, _ in answers:
                    assert 200 <= status < 300, (text, status, output)
                if streaming:
                    _check_fresh_stream(output)
                if command.expect is not None:
                    assert answers, (text, output)
                    body = json.loads(answers[-1][1])
                    expected = json.loads(command.expect)
                    assert matches(expected, body), (text, command.expect, body)
                    if "session/new" in text:
                        session_id = body["result"]["sessionId"]
        # the background prompt ended once the permission was answered
        assert any(t.startswith("wait") for t in ran)
        assert re.search(r'"id":4,"result":\{"stopReason":"end_turn"', outputs), outputs
        assert any("/export?" in t for t in ran)
        assert list(tmp_path.glob("*.md")), "the export wrote no file"
    finally:
        await shell.close()


def _check_fresh_stream(output: str) -> None:
    """Right after session/new: replayed events (from event 1), then the connected frame."""
    frames = [f for f in output.split("\n\n") if "data:" in f]
    assert frames, output
    assert frames[0].startswith("id: 1\n"), frames[0]
    assert '"status":"connecting"' in frames[0]
    connected = [i for i, f in enumerate(frames) if "Connected to ACP session." in f]
    assert len(connected) == 1, output
    # nothing before the connected frame lacks an id; everything before it is replay
    assert all(f.startswith("id: ") for f in frames[: connected[0]])
