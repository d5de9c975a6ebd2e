"""ACP client terminals of one session's agent (`terminal/create|output|wait_for_exit|kill|release`).

An agent asks us to run a command and read its output. Rules, so that a terminal can do
no more than the agent itself and cannot take the gateway's memory:
- the command is exec'd with its argument list, never through a shell, in a new
  process group (so a kill reaches everything it started), stdin from /dev/null;
- its working directory is inside the session's cwd (symlinks resolved; a relative
  cwd is taken from the session's cwd);
- its environment is the agent's own (the same dict the agent was spawned with) plus
  the request's `env`, except entries that would replace one of the agent's variables
  or set a dynamic-loader variable (`LD_*`, `DYLD_*`): those are ignored;
- output (stdout and stderr merged) is kept up to `outputByteLimit` bytes, capped by
  TERMINAL_OUTPUT_LIMIT, dropping from the start on a character boundary;
- output is also recorded as `terminal_output` events, at most one per terminal per
  EVENT_INTERVAL and EVENT_MAX_CHARS each (a burst keeps its tail and says how many
  characters it left out in `skipped`);
- at most MAX_TERMINALS terminals are held (created, not yet released) per session,
  and every one is killed when the session's agent stops.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acp.exceptions import RequestError

from shared.events import gateway_update

logger = logging.getLogger(__name__)

INVALID_PARAMS = -32602
SERVER_ERROR = -32000
READ_CHUNK = 64 * 1024
EVENT_INTERVAL = 0.1  # seconds between two terminal_output events of one terminal
EVENT_MAX_CHARS = 4096  # characters in one terminal_output event
# after the command exited: how long to read what its pipe still holds (a child that
# left the group may keep it open)
DRAIN_AFTER_EXIT = 1.0
STOP_WAIT = 5.0  # bound on waiting for a killed terminal's watcher
LOADER_PREFIXES = ("LD_", "DYLD_")
# defaults of the settings TERMINAL_OUTPUT_LIMIT and MAX_TERMINALS
OUTPUT_LIMIT = 1024 * 1024
MAX_TERMINALS = 8


def invalid(name: str, value: Any, reason: str) -> RequestError:
    """-32602 whose message names the field (and data carries it)."""
    return RequestError(INVALID_PARAMS, f"Invalid {name}: {reason}", {name: value})


class OutputBuffer:
    """At most `limit` bytes of UTF-8 text; older output is dropped from the start.

    The cut moves forward to the next character start, so the text stays valid even if
    it is then slightly shorter than the limit (ACP's rule for `outputByteLimit`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.truncated = False
        self._data = bytearray()

    def append(self, text: str) -> None:
        if not text:
            return
        self._data += text.encode("utf-8")
        excess = len(self._data) - self.limit
        if excess <= 0:
            return
        cut = excess
        while cut < len(self._data) and self._data[cut] & 0xC0 == 0x80:
            cut += 1  # a continuation byte: not a character start
        del self._data[:cut]
        self.truncated = True

    @property
    def text(self) -> str:
        return self._data.decode("utf-8")

    def __len__(self) -> int:
        return len(self._data)


def resolve_cwd(session_cwd: Path, requested: str | None) -> Path:
    """The terminal's working directory: inside the session's cwd, or -32602 naming `cwd`."""
    root = session_cwd.resolve()
    if requested is None or requested == "":
        return root
    if "\0" in requested:
        raise invalid("cwd", requested, "contains a NUL character")
    target = (root / requested).resolve()  # an absolute `requested` replaces root
    if target != root and root not in target.parents:
        raise invalid("cwd", requested, "outside the session cwd")
    if not target.is_dir():
        raise invalid("cwd", requested, "not a directory")
    return target


def terminal_env(
    agent_env: Mapping[str, str], requested: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """The agent's environment plus the requested entries that change none of it."""
    env = dict(agent_env)
    for name, value in requested:
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise invalid("env", name, "not a valid variable")
        if name in agent_env or name.startswith(LOADER_PREFIXES):
            logger.info(
                "terminal env entry %s ignored: the agent's own value stays", name
            )
            continue
        env[name] = value
    return env


def exit_status(returncode: int) -> dict[str, Any]:
    """`{exitCode, signal}` as ACP reports them (one of the two is null)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return {"exitCode": None, "signal": name}
    return {"exitCode": returncode, "signal": None}


@dataclass(slots=True, eq=False)
class Terminal:
    """One command and what it wrote."""

    terminal_id: str
    proc: asyncio.subprocess.Process
    output: OutputBuffer
    exited: asyncio.Future[dict[str, Any]]
    watcher: asyncio.Task[None] | None = None
    pending: str = ""  # output not yet recorded as an event
    skipped: int = 0  # characters left out of the events since the last one
    last_event: float = 0.0
    flush_timer: asyncio.TimerHandle | None = None
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    def kill(self) -> None:
        """SIGKILL the command's whole process group (also after the leader exited)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Terminals:
    """The terminals of one session's agent; `close()` kills them all."""

    def __init__(
        self,
        cwd: Path,
        env: Mapping[str, str],
        record: Callable[[dict[str, Any]], None],
        *,
        output_limit: int,
        max_terminals: int,
        wrap: Callable[[list[str]], list[str]] = list,
    ) -> None:
        self._cwd = cwd
        # the argv that runs a command as the agent's user (AGENT_USER), or the argv itself
        self._wrap = wrap
        self._env = env  # read at each create: the agent's env is filled in at spawn
        self._record = record
        self._output_limit = output_limit
        self._max = max_terminals
        self._terminals: dict[str, Terminal] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._terminals)

    def closed(self) -> bool:
        """True once the session stops (a method: re-read after every await)."""
        return self._closed

    async def create(
        self,
        command: str,
        args: list[str] | None = None,
        env: Iterable[tuple[str, str]] = (),
        cwd: str | None = None,
        output_byte_limit: int | None = None,
    ) -> dict[str, Any]:
        """Start the command; answers its id at once (ACP: it runs on)."""
        if self.closed():
            raise RequestError(SERVER_ERROR, "The session is stopping")
        if len(self._terminals) >= self._max:
            raise RequestError(
                SERVER_ERROR,
                f"Too many terminals: at most {self._max} per session; release one first",
            )
        if not command:
            raise invalid("command", command, "empty")
        workdir = await asyncio.to_thread(resolve_cwd, self._cwd, cwd)
        full_env = terminal_env(self._env, env)
        limit = self._output_limit
        if output_byte_limit is not None:
            limit = min(max(0, output_byte_limit), limit)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._wrap([command, *(args or [])]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=str(workdir),
                env=full_env,
                start_new_session=True,
            )
        except ValueError as err:  # a NUL byte in the command or an argument
            raise invalid("command", command, str(err)) from err
        except OSError as err:
            raise invalid("command", command, err.strerror or str(err)) from err
        terminal = Terminal(
            terminal_id=f"term_{uuid.uuid4().hex}",
            proc=proc,
            output=OutputBuffer(limit),
            exited=asyncio.get_running_loop().create_future(),
        )
        self._terminals[terminal.terminal_id] = terminal
        terminal.watcher = asyncio.create_task(
            self._watch(terminal), name=f"terminal:{terminal.terminal_id}"
        )
        if self.closed():  # the session stopped while we spawned
            del self._terminals[terminal.terminal_id]
            await self._stop(terminal)
            raise RequestError(SERVER_ERROR, "The session is stopping")
        return {"terminalId": terminal.terminal_id}

    def output(self, terminal_id: str) -> dict[str, Any]:
        terminal = self._get(terminal_id)
        result: dict[str, Any] = {
            "output": terminal.output.text,
            "truncated": terminal.output.truncated,
        }
        if terminal.exited.done():
            result["exitStatus"] = terminal.exited.result()
        return result

    async def wait_for_exit(self, terminal_id: str) -> dict[str, Any]:
        terminal = self._get(terminal_id)
        return dict(await asyncio.shield(terminal.exited))

    async def kill(self, terminal_id: str) -> dict[str, Any]:
        """Kill the command; the terminal stays valid for output and exit status."""
        terminal = self._get(terminal_id)
        terminal.kill()
        return {}

    async def release(self, terminal_id: str) -> dict[str, Any]:
        """Kill the command if it still runs and forget the terminal."""
        terminal = self._get(terminal_id)
        del self._terminals[terminal_id]
        await self._stop(terminal)
        return {}

    async def close(self) -> None:
        """The session stops: kill every terminal's process group, wait for them."""
        self._closed = True
        held = list(self._terminals.values())
        self._terminals.clear()
        await asyncio.gather(*(self._stop(t) for t in held))

    def _get(self, terminal_id: str) -> Terminal:
        terminal = self._terminals.get(terminal_id)
        if terminal is None:
            raise invalid("terminalId", terminal_id, "no such terminal")
        return terminal

    async def _stop(self, terminal: Terminal) -> None:
        terminal.kill()
        watcher = terminal.watcher
        if watcher is not None and not watcher.done():
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await asyncio.shield(watcher)
            except TimeoutError:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self, terminal: Terminal) -> None:
        """Read the output until the command exits (and its pipe drains); then the status."""
        pump = asyncio.create_task(self._pump(terminal))
        code: int | None = None
        try:
            code = await terminal.proc.wait()
            done, _ = await asyncio.wait({pump}, timeout=DRAIN_AFTER_EXIT)
            if not done:
                logger.info(
                    "terminal %s: output still open after exit; stopped reading",
                    terminal.terminal_id,
                )
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            self._take(terminal, terminal.decoder.decode(b"", final=True))
            self._emit(terminal)
            if not terminal.exited.done():
                status = (
                    exit_status(code)
                    if code is not None
                    else {"exitCode": None, "signal": "SIGKILL"}
                )
                terminal.exited.set_result(status)

    async def _pump(self, terminal: Terminal) -> None:
        stream = terminal.proc.stdout
        assert stream is not None
        while chunk := await stream.read(READ_CHUNK):
            self._take(terminal, terminal.decoder.decode(chunk))
            wait = terminal.last_event + EVENT_INTERVAL - time.monotonic()
            if wait <= 0:
                self._emit(terminal)
            elif terminal.flush_timer is None:
                terminal.flush_timer = asyncio.get_running_loop().call_later(
                    wait, self._emit, terminal
                )

    @staticmethod
    def _take(terminal: Terminal, text: str) -> None:
        if not text:
            return
        terminal.output.append(text)
        pending = terminal.pending + text
        if len(pending) > EVENT_MAX_CHARS:
            terminal.skipped += len(pending) - EVENT_MAX_CHARS
            pending = pending[-EVENT_MAX_CHARS:]
        terminal.pending = pending

    def _emit(self, terminal: Terminal) -> None:
        """Record what is pending as one terminal_output event."""
        if terminal.flush_timer is not None:
            terminal.flush_timer.cancel()
            terminal.flush_timer = None
        if not terminal.pending and not terminal.skipped:
            return
        fields: dict[str, Any] = {
            "terminalId": terminal.terminal_id,
            "data": terminal.pending,
        }
        if terminal.skipped:
            fields["skipped"] = terminal.skipped
        self._record(gateway_update("terminal_output", **fields))
        terminal.pending = ""
        terminal.skipped = 0
        terminal.last_event = time.monotonic()
