"""One agent subprocess and its ACP client connection.

We spawn the process ourselves (own process group, explicit environment, private HOME,
stderr drained) and talk ACP through the SDK's `connect_to_agent`. Incoming
`session/update` notifications are taken from a raw, synchronous observer: it runs in
wire order and sees every kind, including ones the SDK's typed callback would drop.
Requests to the agent go out raw too, so replies keep fields the typed models drop
(legacy `models`, unknown keys); one whose caller goes away (cancelled, timed out, the
session stopping) is withdrawn with `$/cancel_request`. The owner (live.LiveSession)
supplies callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import acp
import orjson
from acp.connection import StreamDirection, StreamEvent
from acp.core import ClientSideConnection
from acp.exceptions import RequestError

from services.gateway import terminals
from services.gateway.confine import AgentUser, Fence, Outside, hand_over, user_argv
from services.gateway.terminals import Terminals

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
REQUEST_TIMEOUT = 30.0
STOP_STEP = 2.0  # seconds between the rungs of the shutdown ladder
STDERR_TAIL_LINES = 20
STDERR_LINES_PER_SECOND = 50
STDERR_MAX_LINE = 8192
STREAM_LIMIT = 50 * 1024 * 1024  # agents send long lines (files, images)
CLIENT_INFO = {"name": "routa-gateway", "title": "Routa", "version": "0.1.0"}
# a prompt is withdrawn with session/cancel, never with $/cancel_request
NOT_WITHDRAWN = frozenset({"session/prompt"})

# The id the SDK gave the request being sent in this task. The SDK's send_request
# neither returns the id nor sends `$/cancel_request` when its caller goes away; its
# observers run in the sending task right after the request is written, so `_observe`
# hands the id to `AgentProcess.request` through this.
_SENT_ID: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "agent_request_id", default=None
)


class AgentDied(Exception):
    """The agent process is gone (or its pipe closed) while we waited on it."""


class AgentRequestFailed(Exception):
    """The agent answered a request with a JSON-RPC error; carried as data.agentError."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def agent_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class AgentTimeout(Exception):
    """A request to the agent got no answer in time."""


class ReadGate(Protocol):
    """Back-pressure on agents' stdout (eventlog.EventBuffer): no next line while full."""

    def full(self) -> bool: ...

    async def wait_room(self) -> None: ...


class AgentCallbacks(Protocol):
    """What the session runtime does with what the agent sends."""

    def on_update(self, params: dict[str, Any]) -> None: ...

    def on_stderr(self, line: str) -> None: ...

    def on_exit(self, returncode: int) -> None: ...

    async def request_permission(self, params: dict[str, Any]) -> dict[str, Any]: ...

    async def holds_lease(self) -> bool:
        """False once another instance took the session over: no more side effects."""
        ...

    def cancel_permission(self, tool_call_id: str) -> None: ...

    async def request_elicitation(
        self, elicitation_id: str, params: dict[str, Any], *, withdrawn: bool = False
    ) -> dict[str, Any]: ...

    def cancel_elicitation(self, elicitation_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """How to launch one agent process."""

    command: str
    args: tuple[str, ...]
    cwd: Path
    home: Path
    request_timeout: float = REQUEST_TIMEOUT
    # AGENT_MAX_LINE: one stdout line over this stops the agent
    max_line: int = STREAM_LIMIT
    # TERMINAL_OUTPUT_LIMIT, MAX_TERMINALS: the agent's ACP client terminals
    terminal_output_limit: int = terminals.OUTPUT_LIMIT
    max_terminals: int = terminals.MAX_TERMINALS
    # what fs requests may touch; None: the cwd and everything below it
    fence: Fence | None = None
    # AGENT_USER: the user the agent runs as, and the directories handed to it
    user: AgentUser | None = None
    owned: tuple[Path, ...] = ()

    def resolve(self, path: str) -> Path:
        """A path of an fs request, resolved inside the fence; else RequestError."""
        try:
            return (self.fence or Fence(self.cwd.resolve(), self.cwd, ())).resolve(path)
        except Outside as err:
            raise RequestError.invalid_params(
                {"path": path, "reason": str(err)}
            ) from err

    # the provider's variables (credentials, preset), over agent_env's
    env: dict[str, str] = field(default_factory=dict)
    # claude's credentials through ACP authenticate (AGENT_AUTH_CLAUDE=gateway):
    # `{baseUrl, headers}`; offered in initialize's clientCapabilities when set
    gateway_auth: dict[str, Any] | None = None
    session_id: str = ""  # for log lines
    provider: str = ""


def agent_env(home: Path) -> dict[str, str]:
    """The explicit environment of an agent: never the service's own variables or secrets."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(home),
    }


class _LineLimitedReader(asyncio.StreamReader):
    """The agent's stdout as the SDK reads it, with a bound on one line.

    The SDK joins an overlong line chunk by chunk without any bound, so a
    runaway agent could take the gateway's memory. With the pipe's limit set to the
    maximum line, an overrun means the line is too long: we report it, stop the agent
    and show the SDK an end of stream.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        on_overflow: Any,
        intercept: Callable[[bytes], bool] | None = None,
        gate: ReadGate | None = None,
    ) -> None:
        # a StreamReader for the SDK's isinstance check; only these two methods are used
        super().__init__()
        self._reader = reader
        self._on_overflow = on_overflow
        self._intercept = intercept
        self._gate = gate
        self._ungated = asyncio.Event()
        self._over = False

    def ungate(self) -> None:
        """Read without waiting for room from now on (the agent is being stopped)."""
        self._ungated.set()

    async def _room(self) -> None:
        """Back-pressure: while the event buffer is full, read nothing more.

        The pipe transport is paused too, or the StreamReader would keep reading ahead
        (up to twice the line limit); the agent then blocks writing its stdout.
        """
        gate = self._gate
        if gate is None or not gate.full() or self._ungated.is_set():
            return
        transport = getattr(self._reader, "_transport", None)
        if not isinstance(transport, asyncio.ReadTransport):
            transport = None
        if transport is not None:
            transport.pause_reading()
        room = asyncio.ensure_future(gate.wait_room())
        ungated = asyncio.ensure_future(self._ungated.wait())
        try:
            await asyncio.wait({room, ungated}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            ungated.cancel()
            # unless the StreamReader paused it itself (its buffer is over its limit)
            if transport is not None and not getattr(self._reader, "_paused", False):
                transport.resume_reading()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]  # the SDK passes one separator
        if not self._over:
            try:
                await self._room()
                line = await self._reader.readuntil(separator)
                while self._intercept is not None and self._intercept(line):
                    await self._room()
                    line = await self._reader.readuntil(separator)
                return line
            except asyncio.LimitOverrunError:
                self._over = True
                self._on_overflow()
                # read the killed agent's pipe to its end, so the transport closes
                while await self._reader.read(1 << 16):
                    pass
        raise asyncio.IncompleteReadError(b"", None)

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)


class _Client:
    """The client half the SDK routes agent requests to; advertised: fs read/write, terminals."""

    def __init__(self, agent: AgentProcess) -> None:
        self._agent = agent

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        # The raw observer already recorded it (unknown kinds included).
        return None

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> dict[str, Any]:
        params = {
            "toolCall": tool_call.model_dump(
                mode="json", by_alias=True, exclude_none=True
            ),
            "options": [
                o.model_dump(mode="json", by_alias=True, exclude_none=True)
                for o in options
            ],
        }
        return await self._agent.callbacks.request_permission(params)

    async def create_elicitation(
        self, message: str, mode: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """`elicitation/create`: held for the user like a permission request (form mode only)."""
        # the observer saw this request first and named it (it reads in the same order)
        elicitation_id = self._agent.take_elicitation_id()
        requested = getattr(mode, "requested_schema", None)  # form modes only
        if requested is None:
            raise RequestError.invalid_params(
                {"mode": "url", "reason": "only form elicitation is supported"}
            )
        schema = requested.model_dump(mode="json", by_alias=True, exclude_unset=True)
        params: dict[str, Any] = {"message": message, "requestedSchema": schema}
        tool_call_id = getattr(mode, "tool_call_id", None)
        if isinstance(tool_call_id, str):
            params["toolCallId"] = tool_call_id
        return await self._agent.callbacks.request_elicitation(
            elicitation_id,
            params,
            # $/cancel_request may come before this handler ran: answered cancel at once
            withdrawn=self._agent.withdrawn(elicitation_id),
        )

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        target = self._agent.spec.resolve(path)
        try:
            text = await asyncio.to_thread(target.read_text, encoding="utf-8")
        except FileNotFoundError as err:
            raise RequestError.resource_not_found(path) from err
        except (OSError, UnicodeDecodeError) as err:
            raise RequestError.internal_error(
                {"path": path, "details": str(err)}
            ) from err
        if line is not None or limit is not None:
            lines = text.splitlines(keepends=True)
            start = max((line or 1) - 1, 0)
            end = start + limit if limit is not None else None
            text = "".join(lines[start:end])
        return {"content": text}

    async def write_text_file(
        self, session_id: str, path: str, content: str, **kwargs: Any
    ) -> dict[str, Any]:
        spec = self._agent.spec
        target = spec.resolve(path)
        if not await self._agent.callbacks.holds_lease():
            # fenced: the session runs on another instance now, which owns its files
            raise RequestError.internal_error(
                {"path": path, "details": "session taken over by another gateway"}
            )

        def _write() -> None:
            made = [p for p in (target, *target.parents) if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            if spec.user is not None:
                # what the gateway writes for the agent is the agent's, like its own files
                hand_over(spec.user, made)

        try:
            await asyncio.to_thread(_write)
        except OSError as err:
            raise RequestError.internal_error(
                {"path": path, "details": str(err)}
            ) from err
        return {}

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: list[Any] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if not await self._agent.callbacks.holds_lease():
            # fenced: the session runs on another instance now; start nothing here
            raise RequestError.internal_error(
                {"command": command, "details": "session taken over by another gateway"}
            )
        return await self._agent.terminals.create(
            command,
            args,
            [(e.name, e.value) for e in env or []],
            cwd,
            output_byte_limit,
        )

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        return self._agent.terminals.output(terminal_id)

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._agent.terminals.wait_for_exit(terminal_id)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._agent.terminals.kill(terminal_id)

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._agent.terminals.release(terminal_id)


class AgentProcess:
    """A running agent: spawn, raw requests with timeouts, death detection, the stop ladder."""

    def __init__(
        self, spec: AgentSpec, callbacks: AgentCallbacks, gate: ReadGate | None = None
    ) -> None:
        self.spec = spec
        self.callbacks = callbacks
        self.gate = gate
        self._stdout: _LineLimitedReader | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.conn: ClientSideConnection | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.stderr_tail: collections.deque[str] = collections.deque(
            maxlen=STDERR_TAIL_LINES
        )
        self.stderr_dropped = 0
        self.suppress_updates = False  # while a native session/load replays history
        self._tasks: set[asyncio.Task[None]] = set()
        self._permission_requests: dict[Any, str] = {}  # agent request id → toolCallId
        # elicitation/create requests, named by the observer in arrival order
        self._elicitation_requests: dict[Any, str] = {}  # agent request id → our id
        self._elicitation_ids: collections.deque[str] = collections.deque()
        self._withdrawn: set[str] = set()  # cancelled before their handler ran
        self._in_flight: dict[Any, str] = {}  # our request id → method, until answered
        self._stopping = False
        self._drain: asyncio.Task[None] | None = None
        # the environment the agent is spawned with; its terminals get the same
        self.env: dict[str, str] = {}
        self.terminals = Terminals(
            spec.cwd,
            self.env,
            self._record_terminal_output,
            output_limit=spec.terminal_output_limit,
            max_terminals=spec.max_terminals,
            wrap=lambda argv: user_argv(spec.user, argv),
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        """Spawn the process and connect; raises OSError when it cannot be started."""
        self.spec.home.mkdir(parents=True, exist_ok=True)
        self.env.update(agent_env(self.spec.home))
        self.env.update(self.spec.env)  # the provider's variables win
        if self.spec.user is not None:
            hand_over(self.spec.user, self.spec.owned)
        self.proc = await asyncio.create_subprocess_exec(
            *user_argv(self.spec.user, [self.spec.command, *self.spec.args]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self.spec.cwd),
            env=self.env,
            start_new_session=True,
            limit=self.spec.max_line,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdout = _LineLimitedReader(
            self.proc.stdout, self._line_too_long, self._take_update, self.gate
        )
        self.conn = acp.connect_to_agent(
            cast("acp.Client", _Client(self)),
            self.proc.stdin,
            self._stdout,
            observers=[self._observe],
            # elicitation/create is routed only with the unstable protocol
            use_unstable_protocol=True,
        )
        self._drain = self._spawn(self._drain_stderr())
        _ = self._spawn(self._wait_exit())

    def _line_too_long(self) -> None:
        """An stdout line over AGENT_MAX_LINE: the agent is killed and the session errors."""
        message = f"agent wrote a stdout line over {self.spec.max_line} bytes; stopped"
        logger.warning("%s (pid %s)", message, self.pid)
        self.stderr_tail.append(message)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _record_terminal_output(self, params: dict[str, Any]) -> None:
        """terminal_output events go to the session's log like the agent's updates."""
        self.callbacks.on_update(params)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _take_update(self, line: bytes) -> bool:
        """A `session/update` notification line, handled before the SDK sees it.

        The hot path (one per chunk): parsed once with orjson and recorded in wire order,
        skipping the SDK's stdlib parse, deep copy for observers, task and model
        validation (py-spy: about half the gateway's CPU per event). Anything else, or a
        line orjson refuses, goes on to the SDK and the observer as before.
        """
        if b'"session/update"' not in line:
            return False
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if (
            not isinstance(message, dict)
            or message.get("method") != "session/update"
            or "id" in message
        ):
            return False
        params = message.get("params")
        if not isinstance(params, dict):
            return False
        if not self.suppress_updates:
            self.callbacks.on_update(params)
        return True

    def _observe(self, event: StreamEvent) -> None:
        """Synchronous, in wire order: the source of truth for the event log."""
        if event.direction is not StreamDirection.INCOMING:
            if "method" in event.message and "id" in event.message:
                # our request, written by the SDK in request()'s task
                sent = _SENT_ID.get()
                if sent is not None:
                    sent.append(event.message["id"])
                    self._in_flight[event.message["id"]] = event.message["method"]
            elif "method" not in event.message:
                # our answer to an agent request: it can no longer be cancelled
                answered = event.message.get("id")
                self._permission_requests.pop(answered, None)
                self._elicitation_requests.pop(answered, None)
            return
        message = event.message
        method = message.get("method")
        if method == "session/update" and "id" not in message:
            params = message.get("params")
            if isinstance(params, dict) and not self.suppress_updates:
                self.callbacks.on_update(params)
        elif method == "session/request_permission" and "id" in message:
            params = message.get("params") or {}
            tool_call = params.get("toolCall") if isinstance(params, dict) else None
            if isinstance(tool_call, dict) and isinstance(
                tool_call.get("toolCallId"), str
            ):
                self._permission_requests[message["id"]] = tool_call["toolCallId"]
        elif method == "elicitation/create" and "id" in message:
            elicitation_id = f"elicit_{uuid.uuid4().hex[:16]}"
            self._elicitation_requests[message["id"]] = elicitation_id
            self._elicitation_ids.append(elicitation_id)
        elif method == "$/cancel_request":
            params = message.get("params") or {}
            request_id = params.get("requestId") if isinstance(params, dict) else None
            tool_call_id = self._permission_requests.pop(request_id, None)
            if tool_call_id is not None:
                self.callbacks.cancel_permission(tool_call_id)
            withdrawn = self._elicitation_requests.pop(request_id, None)
            if withdrawn is not None:
                if withdrawn in self._elicitation_ids:
                    self._withdrawn.add(withdrawn)  # its handler has not run yet
                self.callbacks.cancel_elicitation(withdrawn)

    def withdrawn(self, elicitation_id: str) -> bool:
        """Whether the agent cancelled this request before its handler ran (once)."""
        if elicitation_id in self._withdrawn:
            self._withdrawn.discard(elicitation_id)
            return True
        return False

    def take_elicitation_id(self) -> str:
        """The id the observer gave the oldest elicitation request not yet handled."""
        if self._elicitation_ids:
            return self._elicitation_ids.popleft()
        return f"elicit_{uuid.uuid4().hex[:16]}"

    async def _drain_stderr(self) -> None:
        """Read stderr forever (an unread pipe deadlocks the agent); rate-limit what we emit."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        pending = b""
        window_start = time.monotonic()
        emitted = 0
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > STDERR_MAX_LINE:
                lines.append(pending)
                pending = b""
            for raw in lines:
                line = raw[:STDERR_MAX_LINE].decode("utf-8", "replace").rstrip("\r")
                self.stderr_tail.append(line)
                now = time.monotonic()
                if now - window_start >= 1.0:
                    window_start, emitted = now, 0
                # stderr is never held back: while the event buffer is full (Postgres
                # down) its lines are dropped like those over the rate
                full = self.gate is not None and self.gate.full()
                if emitted < STDERR_LINES_PER_SECOND and not full:
                    emitted += 1
                    self.callbacks.on_stderr(line)
                else:
                    self.stderr_dropped += 1
        if pending:
            line = pending[:STDERR_MAX_LINE].decode("utf-8", "replace")
            self.stderr_tail.append(line)
            self.callbacks.on_stderr(line)

    async def _wait_exit(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # let the stderr drain take the last lines (bounded: the pipe may be held by children)
        if self._drain is not None:
            await asyncio.wait({self._drain}, timeout=0.5)
        if not self.exited.done():
            self.exited.set_result(code)
        if not self._stopping:
            self.callbacks.on_exit(code)

    def last_stderr(self, n: int = 5) -> str:
        return "\n".join(list(self.stderr_tail)[-n:])

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = -1.0,
    ) -> Any:
        """A raw request; AgentRequestFailed / AgentDied / AgentTimeout on failure.

        The default timeout (-1) is the spec's request_timeout (AGENT_REQUEST_TIMEOUT);
        None waits for ever (the prompt itself).
        """
        if timeout is not None and timeout < 0:
            timeout = self.spec.request_timeout
        if self.conn is None or self.exited.done():
            raise AgentDied("agent process is not running")
        call = self.conn._conn.send_request(method, params)
        started = time.monotonic()
        sent: list[Any] = []
        token = _SENT_ID.set(sent)
        try:
            if timeout is None:
                return await call
            async with asyncio.timeout(timeout):
                return await call
        except RequestError as err:
            self._warn(method, err.code, str(err), started)
            raise AgentRequestFailed(err.code, str(err), err.data) from err
        except ConnectionError as err:
            self._warn(method, None, "agent process exited", started)
            raise AgentDied("agent process exited") from err
        except TimeoutError as err:
            self._warn(method, None, "timed out", started)
            self._withdraw(method, sent)
            raise AgentTimeout(
                f"agent did not answer {method} within {timeout:g}s"
            ) from err
        except asyncio.CancelledError:
            # the caller went away: its task was cancelled (a handler cancelled with its
            # connection, a shutdown)
            self._withdraw(method, sent)
            raise
        finally:
            _SENT_ID.reset(token)
            for request_id in sent:
                self._in_flight.pop(request_id, None)

    def _withdraw(self, method: str, sent: list[Any]) -> None:
        """Nobody waits for this request any more: ask the agent to drop it.

        The SDK has forgotten the request by now, so the agent's answer (a result, or
        -32800 request cancelled) is dropped when it comes. Not sent when the caller left
        before the request was written (`sent` is empty): rare, and then the answer is
        dropped all the same.
        """
        if method in NOT_WITHDRAWN:
            return
        for request_id in sent:
            _ = self._spawn(self.notify("$/cancel_request", {"requestId": request_id}))

    def _warn(
        self, method: str, code: int | None, message: str, started: float
    ) -> None:
        """Every failed agent request, with what an operator needs to find it."""
        logger.warning(
            "agent request failed: session=%s provider=%s method=%s code=%s "
            "duration=%.2fs: %s",
            self.spec.session_id or "-",
            self.spec.provider or "-",
            method,
            code if code is not None else "-",
            time.monotonic() - started,
            message,
        )

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if self.conn is None or self.exited.done():
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn._conn.send_notification(method, params)

    async def initialize(self) -> dict[str, Any]:
        """initialize with protocolVersion 1; anything else is refused."""
        result = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "clientCapabilities": {
                    "fs": {"readTextFile": True, "writeTextFile": True},
                    "terminal": True,
                    "elicitation": {"form": {}},
                    # claude-agent-acp offers its `gateway` auth method only when asked
                    **(
                        {"auth": {"_meta": {"gateway": True}}}
                        if self.spec.gateway_auth is not None
                        else {}
                    ),
                },
                "clientInfo": CLIENT_INFO,
            },
        )
        if not isinstance(result, dict):
            raise AgentRequestFailed(
                -32603, "agent answered initialize without a result"
            )
        version = result.get("protocolVersion")
        if version != PROTOCOL_VERSION:
            raise AgentRequestFailed(
                -32603,
                f"agent speaks ACP protocol version {version!r}; this gateway speaks {PROTOCOL_VERSION}",
            )
        return result

    async def _withdraw_all(self) -> None:
        """The session stops: withdraw our requests still in flight before stdin closes.

        Their callers then get the agent's answer (often -32800) or AgentDied at its exit.
        Bounded: an agent that does not read its stdin must not hold the stop up.
        """
        pending = [
            request_id
            for request_id, method in self._in_flight.items()
            if method not in NOT_WITHDRAWN
        ]
        if not pending:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_STEP):
                for request_id in pending:
                    # once: stop runs again in the teardown
                    self._in_flight.pop(request_id, None)
                    await self.notify("$/cancel_request", {"requestId": request_id})

    async def stop(self) -> int | None:
        """close stdin → 2 s → SIGTERM the group → 2 s → SIGKILL the group; reap."""
        self._stopping = True
        if self._stdout is not None:
            # a paused pipe hides the agent's exit: read what it still writes
            self._stdout.ungate()
        await self.terminals.close()  # terminals die with the session
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            await self._withdraw_all()
            if proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    proc.stdin.close()
            for sig in (signal.SIGTERM, signal.SIGKILL, None):
                try:
                    async with asyncio.timeout(STOP_STEP):
                        await asyncio.shield(proc.wait())
                    break
                except TimeoutError:
                    if sig is None:
                        break
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
        # the group may outlive the leader (wrappers); make sure nothing is left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self.conn is not None:
            # bounded: the SDK waits for its handler tasks
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_STEP):
                    await self.conn.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self.exited.done() and proc.returncode is not None:
            self.exited.set_result(proc.returncode)
        return proc.returncode


def on_exit_message(returncode: int, stderr_tail: str) -> str:
    """Human text for acpError when an agent died."""
    msg = f"Agent process exited with code {returncode}"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            msg = f"Agent process killed by {signal.Signals(-returncode).name}"
    if stderr_tail:
        msg += f"; last stderr: {stderr_tail}"
    return msg
