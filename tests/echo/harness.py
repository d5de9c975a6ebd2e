"""A recording ACP client and a spawner for the echo agent process (real subprocess, SDK client side)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from acp import Client, RequestError, spawn_agent_process, text_block
from acp.client.connection import ClientSideConnection
from acp.connection import StreamDirection, StreamEvent
from acp.schema import (
    AllowedOutcome,
    CreateTerminalResponse,
    DeniedOutcome,
    ReadTextFileResponse,
    RequestPermissionResponse,
    TerminalExitStatus,
    TerminalOutputResponse,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # hang guard for condition waits, never a timing assertion


class RecordingClient:
    """Records the wire (via a raw observer) and answers permission and fs requests."""

    def __init__(self) -> None:
        self.updates: list[
            dict[str, Any]
        ] = []  # params of every incoming session/update
        self.requests: list[dict[str, Any]] = []  # every request the agent sent us
        self.responses: list[dict[str, Any]] = []  # every response the agent sent us
        self.typed_updates: list[tuple[str, Any]] = []
        self.permission: dict[
            str, str
        ] = {}  # sessionId -> optionId | "cancelled" | "hold"
        self.permission_asked = asyncio.Event()
        self.fs_errors: dict[str, str] = {}  # path -> error message to answer with
        # the answer to elicitation/create (None: hold until the connection closes)
        self.elicitation: dict[str, Any] | None = {
            "action": "accept",
            "content": {"name": "Ada"},
        }
        self.terminals: dict[str, asyncio.subprocess.Process] = {}
        self.released: list[str] = []
        self._changed = asyncio.Event()

    # -- raw observer -------------------------------------------------------------
    def observe(self, event: StreamEvent) -> None:
        if event.direction is not StreamDirection.INCOMING:
            return
        message = event.message
        method = message.get("method")
        if method == "session/update":
            self.updates.append(message["params"])
        elif method is not None:
            self.requests.append(message)
        else:
            self.responses.append(message)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def session_updates(self, session_id: str) -> list[dict[str, Any]]:
        return [p["update"] for p in self.updates if p["sessionId"] == session_id]

    # -- Client protocol ----------------------------------------------------------
    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.typed_updates.append((session_id, update))

    async def request_permission(
        self, session_id: str, tool_call: Any, options: Any, **_: Any
    ) -> RequestPermissionResponse:
        self.permission_asked.set()
        choice = self.permission.get(session_id, "allow_once")
        if choice == "hold":
            await asyncio.Event().wait()  # until the connection closes
        if choice == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=choice)
        )

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **_: Any,
    ) -> ReadTextFileResponse:
        if path in self.fs_errors:
            raise RequestError(-32002, self.fs_errors[path])
        return ReadTextFileResponse(content=Path(path).read_text())

    async def write_text_file(
        self, session_id: str, path: str, content: str, **_: Any
    ) -> WriteTextFileResponse:
        if path in self.fs_errors:
            raise RequestError(-32002, self.fs_errors[path])
        Path(path).write_text(content)
        return WriteTextFileResponse()

    async def create_elicitation(
        self, message: str, mode: Any, **_: Any
    ) -> dict[str, Any]:
        if self.elicitation is None:
            await asyncio.Event().wait()  # until the connection closes
        assert self.elicitation is not None
        return self.elicitation

    # -- terminals: a plain exec, enough to see what echo asks for ----------------
    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        cwd: str | None = None,
        **_: Any,
    ) -> CreateTerminalResponse:
        try:
            proc = await asyncio.create_subprocess_exec(
                command,
                *(args or []),
                cwd=cwd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as err:
            raise RequestError(-32602, f"cannot run {command}: {err}") from err
        terminal_id = f"t{len(self.terminals) + 1}"
        self.terminals[terminal_id] = proc
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> WaitForTerminalExitResponse:
        code = await self.terminals[terminal_id].wait()
        return WaitForTerminalExitResponse(exit_code=code)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> TerminalOutputResponse:
        proc = self.terminals[terminal_id]
        assert proc.stdout is not None
        data = await proc.stdout.read()
        return TerminalOutputResponse(
            output=data.decode(),
            truncated=False,
            exit_status=TerminalExitStatus(exit_code=proc.returncode),
        )

    async def release_terminal(
        self, session_id: str, terminal_id: str, **_: Any
    ) -> None:
        proc = self.terminals[terminal_id]
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        self.released.append(terminal_id)
        self._changed.set()


@dataclass
class Echo:
    """A running echo agent process and our connection to it."""

    conn: ClientSideConnection
    process: asyncio.subprocess.Process
    client: RecordingClient
    stderr: bytearray = field(default_factory=bytearray)
    stderr_changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def new_session(self, cwd: Path) -> str:
        response = await self.conn.new_session(cwd=str(cwd), mcp_servers=[])
        return response.session_id

    async def prompt(self, session_id: str, text: str) -> str:
        response = await self.conn.prompt(
            session_id=session_id, prompt=[text_block(text)]
        )
        return response.stop_reason

    async def raw_request(self, method: str, params: dict[str, Any]) -> Any:
        """A request the SDK has no typed method for (e.g. legacy session/set_model)."""
        return await self.conn._conn.send_request(method, params)

    async def wait_stderr(self, size: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.stderr) < size and self.process.returncode is None:
                self.stderr_changed.clear()
                await self.stderr_changed.wait()


async def _drain(echo: Echo) -> None:
    """Read stderr continuously (an undrained pipe would block the agent)."""
    stream = echo.process.stderr
    assert stream is not None
    while chunk := await stream.read(65536):
        echo.stderr.extend(chunk)
        echo.stderr_changed.set()
    echo.stderr_changed.set()


@contextlib.asynccontextmanager
async def spawn_echo() -> AsyncIterator[Echo]:
    """Start `python -m services.echo` and initialize it."""
    client = RecordingClient()
    async with spawn_agent_process(
        cast(Client, client),  # duck-typed: implements only what echo calls
        sys.executable,
        "-m",
        "services.echo",
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT)},
        observers=[client.observe],
        use_unstable_protocol=True,  # elicitation is unstable in SDK 0.12.1
    ) as (conn, process):
        echo = Echo(conn=conn, process=process, client=client)
        drain = asyncio.create_task(_drain(echo))
        try:
            yield echo
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
