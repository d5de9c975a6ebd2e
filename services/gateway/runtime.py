"""The session manager: live agents of this instance, their turns, permissions and leases.

Every state change is written to Postgres (the read side computes effective status from
it and the lease), announced with a lifecycle message, and recorded as an event through
the session's EventWriter, in that order where api.md requires it (§3.2, §9.2, §9.25).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
from aiohttp import web

from services.common.keys import CHANNELS, PG_POOL, REDIS, SETTINGS
from services.common.metrics import METRICS
from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    AgentSpec,
    AgentTimeout,
    on_exit_message,
)
from services.gateway.eventlog import EventWriter
from services.gateway.keys import FANOUT
from shared.channels import Channels
from shared.db import session_events, sessions
from shared.db.connect import Connection, Pool
from shared.errors import (
    AgentError,
    BadRequest,
    DependencyDown,
    ProviderUnavailable,
    SessionNotFound,
    SessionUnservable,
    UnknownWorkspace,
)
from shared.events import gateway_update
from shared.lifecycle import session_changed, session_changed_with_events
from shared.providers import Provider, get_provider, resolve_binary
from shared.redisconn import Redis
from shared.settings import Settings

logger = logging.getLogger(__name__)

ResumeMode = Literal["attached", "native", "recreated"]
# how long session/prompt waits to store its user_message before answering (Postgres down)
USER_MESSAGE_STORE_WAIT = 5.0
NAME_MAX = 200


class AgentCallFailed(AgentError):
    """-32000 carrying the agent's own error in data.agentError (api.md §5.1)."""

    def __init__(self, err: AgentRequestFailed, what: str) -> None:
        super().__init__(
            f"Agent error on {what}: {err.message}",
            data={"agentError": err.agent_error()},
        )


def agent_failure(err: Exception, what: str) -> AgentError:
    """Map an agents.py exception to the JSON-RPC error the caller gets."""
    if isinstance(err, AgentRequestFailed):
        return AgentCallFailed(err, what)
    if isinstance(err, AgentTimeout):
        return AgentError(str(err))
    return AgentError(f"Agent process is not running ({what})")


@dataclass(slots=True)
class Turn:
    future: asyncio.Future[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    done: bool = False
    outcome: dict[str, Any] | AgentError | None = None


def _settle(turn: Turn) -> None:
    """Answer the prompt with the turn's outcome (once)."""
    if turn.future.done() or turn.outcome is None:
        return
    if isinstance(turn.outcome, AgentError):
        turn.future.set_exception(turn.outcome)
    else:
        turn.future.set_result(turn.outcome)


@dataclass(slots=True)
class PendingPermission:
    tool_call_id: str
    options: list[dict[str, Any]]
    future: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class StartRequest:
    """What the agent start needs beyond the row: user choices to apply, resume or not."""

    resume: bool
    user_mode: str | None = None
    user_model: str | None = None


class LiveSession:
    """One session whose agent runs (or starts, or stops) on this instance."""

    def __init__(
        self, manager: SessionManager, row: sessions.SessionRow, writer: EventWriter
    ) -> None:
        s = row.session
        self.manager = manager
        self.session_id = s.session_id
        self.uuid = uuid.UUID(s.session_id)
        self.workspace_id = s.workspace_id
        self.provider = s.provider
        self.role = s.role
        self.cwd = Path(s.cwd)
        self.mode_id = s.mode_id
        self.model = s.model
        self.routa_agent_id = s.routa_agent_id
        self.auto_approve = row.auto_approve_permissions
        self.custom_command = row.custom_command
        self.custom_args = list(row.custom_args or [])
        self.mcp_servers = list(row.mcp_servers or [])
        self.writer = writer
        self.agent: AgentProcess | None = None
        self.agent_session_id: str | None = None
        self.acp_status = "connecting"
        self.status = "idle"
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_consume)
        self.resume_mode: ResumeMode = "recreated"
        self.turn: Turn | None = None
        self.permissions: dict[str, PendingPermission] = {}
        self.approve_scope: str | None = None  # "turn" | "session" after an approval
        self.capabilities: dict[str, Any] = {}
        self.config_options: list[dict[str, Any]] = []
        self.modes: dict[str, Any] | None = None
        self.legacy_models: dict[str, Any] | None = None
        self.mode_updates = 0
        self.stopping = False
        self.closed = (
            asyncio.Event()
        )  # set once the agent is reaped and the lease released
        self.last_used = time.monotonic()

    # --- AgentCallbacks -------------------------------------------------------------
    def on_update(self, params: dict[str, Any]) -> None:
        self.last_used = time.monotonic()
        self.writer.append(params)
        update = params.get("update")
        if isinstance(update, dict):
            self.manager.interpret_update(self, update)

    def on_stderr(self, line: str) -> None:
        self.writer.append(
            gateway_update("process_output", source="stderr", data=line + "\n")
        )

    def on_exit(self, returncode: int) -> None:
        self.manager.spawn(self.manager.handle_exit(self, returncode))

    async def request_permission(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.manager.request_permission(self, params)

    def cancel_permission(self, tool_call_id: str) -> None:
        pending = self.permissions.pop(tool_call_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result({"outcome": {"outcome": "cancelled"}})

    def cancel_all_permissions(self) -> None:
        for tool_call_id in list(self.permissions):
            self.cancel_permission(tool_call_id)

    def emit(self, kind: str, /, **fields: Any) -> int:
        """Queue a gateway-made event (fields may include `kind`, e.g. a tool call's)."""
        return self.writer.append({"update": {"sessionUpdate": kind, **fields}})

    async def wait_ready(self) -> None:
        await asyncio.shield(self.ready)

    def model_choice(self) -> tuple[str, str | None, list[str]] | None:
        """How this agent switches models: ("config", id, values) or ("legacy", None, ids)."""
        for opt in self.config_options:
            if opt.get("id") == "model" or opt.get("category") == "model":
                return ("config", str(opt.get("id")), _option_values(opt))
        if self.legacy_models and isinstance(
            self.legacy_models.get("availableModels"), list
        ):
            ids = [
                str(m.get("modelId"))
                for m in self.legacy_models["availableModels"]
                if isinstance(m, dict)
            ]
            return ("legacy", None, ids)
        return None

    def absorb_config_options(self, result: Any) -> None:
        """Keep the complete option list an agent returns from set_config_option."""
        if isinstance(result, dict) and isinstance(result.get("configOptions"), list):
            self.config_options = [
                o for o in result["configOptions"] if isinstance(o, dict)
            ]

    def mode_option(self) -> dict[str, Any] | None:
        """The agent's `mode` config option, preferred over legacy modes (acp.md §4.7)."""
        for opt in self.config_options:
            if opt.get("category") == "mode" or opt.get("id") == "mode":
                return opt
        return None

    def mode_ids(self) -> list[str] | None:
        option = self.mode_option()
        if option is not None:
            return _option_values(option) or None
        if self.modes and isinstance(self.modes.get("availableModes"), list):
            return [
                str(m.get("id"))
                for m in self.modes["availableModes"]
                if isinstance(m, dict)
            ]
        return None


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved: someone may never await it."""
    if not fut.cancelled():
        _ = fut.exception()


def _option_values(opt: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for entry in opt.get("options") or []:
        if not isinstance(entry, dict):
            continue
        if "value" in entry:
            values.append(str(entry["value"]))
        # grouped options
        values.extend(
            str(sub["value"])
            for sub in entry.get("options") or []
            if isinstance(sub, dict) and "value" in sub
        )
    return values


def _current_model(
    config_options: list[dict[str, Any]], legacy: dict[str, Any] | None
) -> str | None:
    for opt in config_options:
        if (opt.get("id") == "model" or opt.get("category") == "model") and isinstance(
            opt.get("currentValue"), str
        ):
            return str(opt["currentValue"])
    if legacy and isinstance(legacy.get("currentModelId"), str):
        return str(legacy["currentModelId"])
    return None


def safe_segment(value: str) -> str:
    """A path segment made from an id (workspace ids are free text)."""
    seg = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    return "_" if seg in ("", ".", "..") else seg


def check_cwd(settings: Settings, cwd: str) -> Path:
    """An absolute path inside AGENT_CWD_ROOT, else -32602 naming cwd."""
    if not cwd or not Path(cwd).is_absolute():
        raise BadRequest(f"Invalid cwd: must be an absolute path, got {cwd!r}")
    root = settings.cwd_root
    target = Path(cwd).resolve()
    if target != root and root not in target.parents:
        raise BadRequest(f"Invalid cwd: {cwd} is outside the agent cwd root {root}")
    return target


@dataclass(slots=True)
class NewSessionArgs:
    workspace_id: str
    name: str | None = None
    cwd: str | None = None
    branch: str | None = None
    provider: str | None = None
    mode_id: str | None = None
    role: str = "CRAFTER"
    model: str | None = None
    parent_session_id: uuid.UUID | None = None
    specialist_id: str | None = None
    mcp_servers: list[Any] = field(default_factory=list)
    idempotency_key: str | None = None
    auto_approve_permissions: bool = False
    custom_command: str | None = None
    custom_args: list[str] | None = None


class SessionManager:
    """Live sessions of this instance; owns every task it starts."""

    def __init__(
        self, settings: Settings, pool: Pool, redis: Redis, channels: Channels
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.channels = channels
        self.live: dict[str, LiveSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resume_locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        # SIGTERM: no new sessions or turns here, running turns finish (drain()).
        self.draining = False
        self._loops: list[asyncio.Task[None]] = []
        # set by the app: whether a session has open SSE streams here (keeps it from idling)
        self.has_subscribers: Callable[[str], bool] = lambda _sid: False
        # set by the app: (events, seconds) of each stored batch, for metrics
        self.on_batch: Callable[[int, float], None] | None = None

    # --- tasks ------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task this manager owns (cancelled on close)."""
        _ = self.spawn_task(coro)

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session task failed", exc_info=task.exception())

    def start_loops(self) -> None:
        self._loops = [
            asyncio.create_task(self._renew_loop(), name="lease-renewal"),
            asyncio.create_task(self._idle_loop(), name="idle-sweeper"),
        ]

    async def close(self) -> None:
        """Stop every agent (status closed, leases released), then every task."""
        self._closed = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(
            *(self.stop(live, reason="shutdown") for live in list(self.live.values())),
            return_exceptions=True,
        )
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=10.0)
            if stuck:
                logger.error("%d session tasks did not stop: %s", len(stuck), stuck)

    # --- state ------------------------------------------------------------------------
    async def _announce(
        self, workspace_id: str, sid: str, changes: dict[str, Any]
    ) -> None:
        await session_changed(
            self.redis, self.channels, "session:updated", sid, workspace_id, changes
        )

    async def set_state(
        self,
        live: LiveSession,
        acp_status: str,
        status: str,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Persist acp_status/status (+ error), then announce the changed wire fields."""
        changes: dict[str, Any] = dict(extra or {})
        if acp_status != live.acp_status or error:
            changes["acpStatus"] = acp_status
        if status != live.status:
            changes["status"] = status
        if error:
            changes["acpError"] = error
        live.acp_status, live.status = acp_status, status
        await sessions.set_state(
            self.pool, live.uuid, acp_status=acp_status, status=status, acp_error=error
        )
        if changes:
            await self._announce(live.workspace_id, live.session_id, changes)

    # --- session/new ------------------------------------------------------------------
    def provider_command(
        self, provider: Provider, custom_command: str | None, custom_args: list[str]
    ) -> tuple[str, tuple[str, ...]]:
        """The executable and arguments, or -32002 saying what is missing."""
        if provider.id == "custom":
            if not custom_command:
                raise BadRequest("Invalid customCommand: required for provider custom")
            if not self.settings.allow_custom_commands:
                raise BadRequest(
                    "Invalid customCommand: custom commands are disabled (set ALLOW_CUSTOM_COMMANDS)"
                )
            found = shutil.which(custom_command)
            if found is None:
                raise ProviderUnavailable(
                    f"Provider custom is not available: command {custom_command!r} not found"
                )
            return found, tuple(custom_args)
        binary = resolve_binary(provider, self.settings)
        if binary is None:
            hint = (
                f" (set {provider.env_override.upper()} or put it on PATH)"
                if provider.env_override
                else ""
            )
            raise ProviderUnavailable(
                f"Provider {provider.id} is not available: binary {provider.binary!r} not found{hint}"
            )
        return binary, provider.args

    async def create(self, args: NewSessionArgs) -> dict[str, Any]:
        """Insert the row and event 1, announce, start the agent in the background."""
        provider_id = args.provider or (
            "custom" if args.custom_command else self.settings.default_provider
        )
        provider = get_provider(provider_id)
        if provider is None:
            raise BadRequest(f"Invalid provider: unknown provider {provider_id!r}")
        if args.custom_command and provider.id != "custom":
            raise BadRequest("Invalid customCommand: only with provider custom")
        self.provider_command(provider, args.custom_command, args.custom_args or [])
        session_id = uuid.uuid4()
        sid = str(session_id)
        if args.cwd is not None:
            cwd = check_cwd(self.settings, args.cwd)
        else:
            cwd = self.settings.cwd_root / safe_segment(args.workspace_id) / sid

        if self.draining:
            raise AgentError("Gateway draining")
        await self.make_room()
        new = sessions.NewSession(
            session_id=session_id,
            workspace_id=args.workspace_id,
            cwd=str(cwd),
            provider=provider.id,
            role=args.role,
            name=args.name,
            branch=args.branch,
            mode_id=args.mode_id,
            model=args.model,
            parent_session_id=args.parent_session_id,
            specialist_id=args.specialist_id,
            owner_instance_id=self.settings.instance_id,
            lease_ttl=self.settings.lease_ttl,
            auto_approve_permissions=args.auto_approve_permissions,
            custom_command=args.custom_command,
            custom_args=args.custom_args,
            mcp_servers=args.mcp_servers,
            idempotency_key=args.idempotency_key,
        )
        # Row, event 1 and the row as read back: one statement, one round trip. Only an
        # idempotency key needs a transaction (its lock and lookup come first).
        first = session_events.StoredEvent(
            1,
            session_events.build_payload(
                sid, 1, gateway_update("acp_status", status="connecting")
            ),
        )
        async with (
            self.pool.acquire() as conn,
            conn.transaction() if args.idempotency_key else contextlib.nullcontext(),
        ):
            if args.idempotency_key:
                cached_reply = await self._idempotent_reply(conn, args)
                if cached_reply is not None:
                    return cached_reply
            try:
                row = await sessions.insert_with_first_event(
                    conn, new, "acp_status", first.payload
                )
            except asyncpg.ForeignKeyViolationError as err:
                if "parent" in (err.constraint_name or ""):
                    raise BadRequest(
                        f"Invalid parentSessionId: unknown session {args.parent_session_id}"
                    ) from err
                raise UnknownWorkspace(args.workspace_id) from err
        # event 1, the list invalidation and session:created in one Redis round trip
        await session_changed_with_events(
            self.redis,
            self.channels,
            "session:created",
            sid,
            args.workspace_id,
            row.session.wire(),
            [first],
        )
        live = self._register(row)
        live.acp_status, live.status = "connecting", "idle"
        self.spawn(
            self._start(
                live,
                StartRequest(
                    resume=False, user_mode=args.mode_id, user_model=args.model
                ),
            )
        )
        return {
            "sessionId": sid,
            "provider": provider.id,
            "role": args.role,
            "acpStatus": "connecting",
            "ownerInstanceId": self.settings.instance_id,
        }

    async def _idempotent_reply(
        self, conn: Connection, args: NewSessionArgs
    ) -> dict[str, Any] | None:
        """The earlier reply for a repeated idempotency key, under its lock; else None."""
        assert args.idempotency_key is not None
        await sessions.lock_idempotency_key(
            conn, args.workspace_id, args.idempotency_key
        )
        existing = await sessions.find_idempotent(
            conn,
            args.workspace_id,
            args.idempotency_key,
            self.settings.idempotency_window,
        )
        if existing is None:
            return None
        cached = await sessions.get(conn, existing)
        if cached is None:
            return None
        reply: dict[str, Any] = {
            "sessionId": cached.session_id,
            "provider": cached.provider,
            "role": cached.role,
            "acpStatus": cached.acp_status,
        }
        if cached.owner_instance_id:
            reply["ownerInstanceId"] = cached.owner_instance_id
        reply["cached"] = True
        return reply

    def _register(self, row: sessions.SessionRow) -> LiveSession:
        writer = EventWriter(
            self.pool,
            self.redis,
            self.channels,
            uuid.UUID(row.session.session_id),
            on_batch=self.on_batch,
        )
        live = LiveSession(self, row, writer)
        self.live[live.session_id] = live
        return live

    async def make_room(self) -> None:
        """At MAX_SESSIONS stop the least recently used idle agent, else -32000."""
        active = [lv for lv in self.live.values() if not lv.stopping]
        if len(active) < self.settings.max_sessions:
            return
        idle = [
            lv
            for lv in active
            if lv.turn is None and lv.ready.done() and not lv.permissions
        ]
        if not idle:
            raise AgentError("Gateway at capacity")
        victim = min(idle, key=lambda lv: lv.last_used)
        await self.stop(victim, reason="capacity")

    # --- agent start ------------------------------------------------------------------
    def _spec(self, live: LiveSession) -> AgentSpec:
        provider = get_provider(live.provider)
        if provider is None:
            raise ProviderUnavailable(f"Provider {live.provider} is not available")
        command, args = self.provider_command(
            provider, live.custom_command, live.custom_args
        )
        home = self.settings.agent_home or (
            self.settings.agents_home_root / live.session_id
        )
        return AgentSpec(
            command=command,
            args=args,
            cwd=live.cwd,
            home=home,
            request_timeout=self.settings.agent_request_timeout,
            max_line=self.settings.agent_max_line,
        )

    async def _start(self, live: LiveSession, req: StartRequest) -> None:
        """initialize → new (or load) → apply mode/model → ready; any failure → error."""
        try:
            await self._start_agent(live, req)
        except Exception as err:  # noqa: BLE001 - every failure becomes acp_status error
            if live.stopping:
                if not live.ready.done():
                    live.ready.set_exception(AgentError("Agent stopped while starting"))
                return
            message = _start_error(err, live)
            logger.warning("agent start failed for %s: %s", live.session_id, message)
            await self.fail(live, message, start_error=err)

    async def _start_agent(self, live: LiveSession, req: StartRequest) -> None:
        spec = self._spec(live)
        await asyncio.to_thread(live.cwd.mkdir, parents=True, exist_ok=True)
        agent = AgentProcess(spec, live)
        live.agent = agent
        await agent.start()
        init = await agent.initialize()
        caps = init.get("agentCapabilities")
        live.capabilities = caps if isinstance(caps, dict) else {}
        provider = get_provider(live.provider)
        native = (
            req.resume
            and provider is not None
            and provider.resume_mode in ("native", "both")
            and bool(live.capabilities.get("loadSession"))
            and bool(live.routa_agent_id)
        )
        if native:
            assert live.routa_agent_id is not None
            agent.suppress_updates = True  # history is already in our log
            try:
                result = await agent.request(
                    "session/load",
                    {
                        "sessionId": live.routa_agent_id,
                        "cwd": str(live.cwd),
                        "mcpServers": live.mcp_servers,
                    },
                )
            finally:
                agent.suppress_updates = False
            live.agent_session_id = live.routa_agent_id
            live.resume_mode = "native"
        else:
            result = await agent.request(
                "session/new", {"cwd": str(live.cwd), "mcpServers": live.mcp_servers}
            )
            if not isinstance(result, dict) or not isinstance(
                result.get("sessionId"), str
            ):
                raise AgentRequestFailed(
                    -32603, "session/new answered without sessionId"
                )
            live.agent_session_id = result["sessionId"]
            live.resume_mode = "recreated"
        self._absorb(live, result if isinstance(result, dict) else {})
        extra: dict[str, Any] = {}
        if live.agent_session_id != live.routa_agent_id:
            live.routa_agent_id = live.agent_session_id
            assert live.routa_agent_id is not None
            await sessions.set_agent_id(self.pool, live.uuid, live.routa_agent_id)
            extra["routaAgentId"] = live.routa_agent_id
        # The user's (or the stored) mode and model win; else take the agent's.
        want_mode = req.user_mode or live.mode_id
        agent_mode = (live.modes or {}).get("currentModeId")
        if want_mode and want_mode != agent_mode:
            await self._agent_set_mode(live, want_mode)
        elif not want_mode and isinstance(agent_mode, str):
            live.mode_id = agent_mode
            await sessions.set_mode(self.pool, live.uuid, agent_mode)
            extra["modeId"] = agent_mode
        want_model = req.user_model or live.model
        agent_model = _current_model(live.config_options, live.legacy_models)
        if want_model and want_model != agent_model:
            await self._agent_set_model(live, want_model)
        elif not want_model and agent_model:
            live.model = agent_model
            await sessions.set_model(self.pool, live.uuid, agent_model)
            extra["model"] = agent_model
        if live.stopping:
            raise AgentDied("stopped while starting")
        await self.set_state(live, "ready", "idle", extra=extra)
        live.emit("acp_status", status="ready")
        live.last_used = time.monotonic()
        if not live.ready.done():
            live.ready.set_result(None)

    def _absorb(self, live: LiveSession, result: dict[str, Any]) -> None:
        modes = result.get("modes")
        if isinstance(modes, dict):
            live.modes = modes
        options = result.get("configOptions")
        if isinstance(options, list):
            live.config_options = [o for o in options if isinstance(o, dict)]
        models = result.get("models")
        if isinstance(models, dict):
            live.legacy_models = models

    async def fail(
        self, live: LiveSession, message: str, *, start_error: Exception | None = None
    ) -> None:
        """acp_status error + status closed; stop the agent; the session stays resumable."""
        if live.stopping:
            return
        live.stopping = True
        live.cancel_all_permissions()
        if not live.ready.done():
            err: AgentError | ProviderUnavailable = AgentError(message)
            if isinstance(start_error, AgentRequestFailed):
                err = AgentError(
                    message, data={"agentError": start_error.agent_error()}
                )
            elif isinstance(start_error, ProviderUnavailable):
                err = start_error
            live.ready.set_exception(err)
        turn = await self._end_turn(live, error=message, settle=False)
        # the row first: whoever sees the event and reads the session finds the new state
        await self.set_state(live, "error", "closed", error=message)
        live.emit("acp_status", status="error", error=message)
        await live.writer.flush()
        if turn is not None:
            _settle(turn)
        await self._teardown(live)

    async def handle_exit(self, live: LiveSession, returncode: int) -> None:
        """The agent died on its own: noticed at once (api.md §5.3)."""
        tail = live.agent.last_stderr() if live.agent else ""
        await self.fail(live, on_exit_message(returncode, tail))

    async def stop(
        self, live: LiveSession, *, reason: str, quiet: bool = False
    ) -> None:
        """Stop the agent on purpose (idle, capacity, shutdown, control message)."""
        if live.stopping:
            return
        live.stopping = True
        live.cancel_all_permissions()
        if not live.ready.done():
            live.ready.set_exception(AgentError(f"Agent stopped ({reason})"))
        if quiet:
            # The query service already wrote state and events for it (api.md §6).
            turn = live.turn
            if turn is not None and not turn.done:
                turn.done = True
                live.turn = None
                if not turn.future.done():
                    turn.future.set_exception(AgentError(f"Session {reason}"))
            await self._teardown(live, release=reason != "deleted")
            return
        turn = await self._end_turn(
            live, error=f"Agent stopped ({reason})", settle=False
        )
        if live.agent is not None:
            await live.agent.stop()
        await self.set_state(live, "closed", "closed")
        live.emit("acp_status", status="closed")
        await live.writer.flush()
        if turn is not None:
            _settle(turn)
        await self._teardown(live)

    async def _teardown(self, live: LiveSession, *, release: bool = True) -> None:
        if live.agent is not None:
            await live.agent.stop()
        if release:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await sessions.release_owner(
                    self.pool, live.uuid, self.settings.instance_id
                )
        await live.writer.close()
        if self.live.get(live.session_id) is live:
            del self.live[live.session_id]
        live.closed.set()

    # --- resume -----------------------------------------------------------------------
    async def ensure_live(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> tuple[LiveSession, ResumeMode]:
        """The live session, resuming it here first when its agent is not running (§5.4)."""
        live = self.live.get(sid)
        if live is not None and not live.stopping:
            self._check_allowed(live.workspace_id, sid, allowed)
            await self._await_ready(live)
            return live, "attached"
        lock = self._resume_locks.setdefault(sid, asyncio.Lock())
        async with lock:
            live = self.live.get(sid)
            if live is not None and not live.stopping:
                await self._await_ready(live)
                return live, "attached"
            if live is not None:
                # let the old agent finish stopping so its lease release cannot race our claim
                await live.closed.wait()
            row = await sessions.get_row(self.pool, sid)
            if row is None:
                raise SessionNotFound(sid)
            self._check_allowed(row.session.workspace_id, sid, allowed)
            if self._closed:
                raise AgentError("Gateway is shutting down")
            if self.draining:
                raise SessionUnservable("Gateway draining")
            await self.make_room()
            previous = await sessions.claim_owner_from(
                self.pool,
                uuid.UUID(sid),
                self.settings.instance_id,
                self.settings.lease_ttl,
            )
            if previous is None:
                fresh = await sessions.get(self.pool, sid)
                owner = fresh.owner_instance_id if fresh else None
                raise SessionUnservable(
                    f"Session owned by {owner or 'another instance'}"
                )
            live = self._register(row)
            live.acp_status = row.session.acp_status
            live.status = "closed"
            if previous == "active":
                # The previous owner died mid-turn: end that turn in the log (§9.25).
                live.emit(
                    "error",
                    message="Turn interrupted: the gateway instance running it was lost",
                )
            await self.set_state(live, "connecting", "idle")
            live.emit("acp_status", status="connecting")
            self.spawn(self._start(live, StartRequest(resume=True)))
            await self._await_ready(live)
            return live, live.resume_mode

    async def _await_ready(self, live: LiveSession) -> None:
        await live.wait_ready()

    def _check_allowed(
        self, workspace_id: str, sid: str, allowed: frozenset[str] | None
    ) -> None:
        if allowed is not None and workspace_id not in allowed:
            raise SessionNotFound(sid)

    async def get_session_or_404(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> sessions.SessionRow:
        row = await sessions.get_row(self.pool, sid)
        if row is None:
            raise SessionNotFound(sid)
        self._check_allowed(row.session.workspace_id, sid, allowed)
        return row

    # --- turns ------------------------------------------------------------------------
    async def prompt(
        self,
        sid: str,
        blocks: list[dict[str, Any]],
        text: str,
        allowed: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        live, _ = await self.ensure_live(sid, allowed)
        if live.turn is not None:
            raise AgentError("A prompt is already running for this session")
        if self.draining:
            raise SessionUnservable("Gateway draining")
        loop = asyncio.get_running_loop()
        turn = Turn(future=loop.create_future())
        turn.future.add_done_callback(_consume)
        live.turn = turn
        live.last_used = time.monotonic()
        try:
            # the user's message is in the log before the agent sees it
            stored = live.emit("user_message", content={"type": "text", "text": text})
            try:
                async with asyncio.timeout(USER_MESSAGE_STORE_WAIT):
                    await live.writer.flush(stored)
            except TimeoutError as err:
                # Postgres is down: answer now instead of hanging (the writer retries)
                raise DependencyDown(
                    "Postgres unavailable: the prompt could not be stored"
                ) from err
            await self.set_state(live, live.acp_status, "active")
        except BaseException as err:
            if live.turn is turn:
                live.turn = None
            # the user_message is (or will be) stored: its turn ends there too (§9.25)
            reason = getattr(err, "message", None) or err.__class__.__name__
            live.emit("error", message=f"The prompt was not started: {reason}")
            raise
        turn.task = self.spawn_task(self._run_turn(live, turn, blocks))
        try:
            async with asyncio.timeout(self.settings.prompt_timeout):
                return await asyncio.shield(turn.future)
        except TimeoutError:
            return {"sessionId": sid, "pending": True}

    async def _run_turn(
        self, live: LiveSession, turn: Turn, blocks: list[dict[str, Any]]
    ) -> None:
        agent = live.agent
        assert agent is not None
        try:
            result = await agent.request(
                "session/prompt",
                {"sessionId": live.agent_session_id, "prompt": blocks},
                timeout=None,
            )
        except AgentDied:
            # The exit handler knows the exit code and ends the turn; make sure it runs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(agent.exited)
            if not turn.done and not live.stopping:
                await self.fail(live, "Agent closed its connection")
            return
        except AgentRequestFailed as err:
            if turn.cancel_requested:
                await self._end_turn(live, turn, result={"stopReason": "cancelled"})
            else:
                await self._end_turn(
                    live,
                    turn,
                    error=f"Agent error: {err.message}",
                    exc=AgentCallFailed(err, "session/prompt"),
                )
            return
        reply: dict[str, Any] = {
            "stopReason": (
                result.get("stopReason", "end_turn")
                if isinstance(result, dict)
                else "end_turn"
            )
        }
        if isinstance(result, dict) and isinstance(result.get("usage"), dict):
            reply["usage"] = result["usage"]
        await self._end_turn(live, turn, result=reply)

    async def _end_turn(
        self,
        live: LiveSession,
        turn: Turn | None = None,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        exc: AgentError | None = None,
        settle: bool = True,
    ) -> Turn | None:
        """Exactly one turn_complete or error per turn (§9.25), stored before the reply.

        With settle=False the caller answers the prompt later (`_settle`), after it has
        stored what must precede the reply (acp_status error on a crash).
        """
        turn = turn or live.turn
        if turn is None or turn.done:
            return None
        turn.done = True
        if turn.watchdog is not None and turn.watchdog is not asyncio.current_task():
            turn.watchdog.cancel()
        if error is not None:
            live.emit("error", message=error)
        else:
            assert result is not None
            live.emit("turn_complete", **result)
        live.cancel_all_permissions()
        await live.writer.flush()
        if live.turn is turn:
            live.turn = None
        if live.approve_scope == "turn":
            live.approve_scope = None
        live.last_used = time.monotonic()
        if not live.stopping:
            await self.set_state(live, live.acp_status, "idle")
        turn.outcome = result if error is None else (exc or AgentError(error))
        if settle:
            _settle(turn)
        return turn

    async def cancel(self, sid: str, allowed: frozenset[str] | None = None) -> None:
        live = self.live.get(sid)
        if live is None:
            await self.get_session_or_404(sid, allowed)
            return
        self._check_allowed(live.workspace_id, sid, allowed)
        turn = live.turn
        if turn is None or turn.done:
            return
        turn.cancel_requested = True
        live.cancel_all_permissions()
        if live.agent is not None and live.agent_session_id:
            await live.agent.notify(
                "session/cancel", {"sessionId": live.agent_session_id}
            )
        if turn.watchdog is None:
            turn.watchdog = self.spawn_task(self._watchdog(live, turn))

    async def _watchdog(self, live: LiveSession, turn: Turn) -> None:
        await asyncio.sleep(self.settings.cancel_watchdog)
        if not turn.done:
            logger.info("cancel watchdog ended the turn of %s", live.session_id)
            await self._end_turn(live, turn, result={"stopReason": "cancelled"})

    # --- permissions ------------------------------------------------------------------
    async def request_permission(
        self, live: LiveSession, params: dict[str, Any]
    ) -> dict[str, Any]:
        tool_call = params.get("toolCall") or {}
        options = [o for o in params.get("options") or [] if isinstance(o, dict)]
        tool_call_id = str(tool_call.get("toolCallId", ""))
        if live.auto_approve or live.approve_scope is not None:
            allow = next(
                (o for o in options if str(o.get("kind", "")).startswith("allow")), None
            )
            if allow is not None:
                return {
                    "outcome": {"outcome": "selected", "optionId": allow["optionId"]}
                }
        if live.turn is not None and live.turn.cancel_requested:
            return {"outcome": {"outcome": "cancelled"}}
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        live.cancel_permission(tool_call_id)  # a repeated request replaces the old one
        live.permissions[tool_call_id] = PendingPermission(
            tool_call_id, options, future
        )
        update = {
            **{k: v for k, v in tool_call.items() if k != "status"},
            "title": tool_call.get("title") or "Permission requested",
            "status": "waiting",
            "options": options,
        }
        live.emit("tool_call", **update)
        try:
            return await future
        finally:
            if live.permissions.get(tool_call_id) is not None and (
                live.permissions[tool_call_id].future is future
            ):
                del live.permissions[tool_call_id]

    async def respond(
        self,
        sid: str,
        tool_call_id: str,
        option_id: str | None,
        decision: str | None,
        scope: str | None,
        allowed: frozenset[str] | None = None,
    ) -> None:
        live = self.live.get(sid)
        if live is None:
            await self.get_session_or_404(sid, allowed)
            raise AgentError(
                f"No pending permission request for tool call {tool_call_id}"
            )
        self._check_allowed(live.workspace_id, sid, allowed)
        pending = live.permissions.get(tool_call_id)
        if pending is None or pending.future.done():
            raise AgentError(
                f"No pending permission request for tool call {tool_call_id}"
            )
        chosen: dict[str, Any] | None
        if option_id is not None:
            chosen = next(
                (o for o in pending.options if o.get("optionId") == option_id), None
            )
            if chosen is None:
                offered = ", ".join(str(o.get("optionId")) for o in pending.options)
                raise BadRequest(
                    f"Invalid response.optionId: {option_id!r} is not offered ({offered})"
                )
        else:
            prefix = "allow" if decision == "approve" else "reject"
            preferred = f"{prefix}_always" if scope == "session" else f"{prefix}_once"
            kinds = [str(o.get("kind", "")) for o in pending.options]
            chosen = next(
                (o for o in pending.options if o.get("kind") == preferred),
                next(
                    (
                        o
                        for o, k in zip(pending.options, kinds, strict=True)
                        if k.startswith(prefix)
                    ),
                    None,
                ),
            )
            if chosen is None:
                raise BadRequest(
                    f"Invalid response.decision: the agent offers no {prefix} option"
                )
        kind = str(chosen.get("kind", ""))
        approved = kind.startswith("allow")
        if approved and scope in ("turn", "session"):
            live.approve_scope = scope
        del live.permissions[tool_call_id]
        live.emit(
            "tool_call_update",
            toolCallId=tool_call_id,
            status="in_progress" if approved else "failed",
            _meta={
                "permission": {
                    "outcome": "selected",
                    "optionId": chosen.get("optionId"),
                    "kind": kind,
                }
            },
        )
        live.last_used = time.monotonic()
        pending.future.set_result(
            {"outcome": {"outcome": "selected", "optionId": chosen.get("optionId")}}
        )

    # --- mode and model ---------------------------------------------------------------
    async def _agent_set_mode(self, live: LiveSession, mode_id: str) -> bool:
        """Ask the agent; True when the agent sent current_mode_update itself."""
        assert live.agent is not None
        known = live.mode_ids()
        if known is not None and mode_id not in known:
            raise BadRequest(
                f"Invalid modeId: {mode_id!r} is not offered ({', '.join(known)})"
            )
        seen = live.mode_updates
        option = live.mode_option()
        if option is not None:
            result = await live.agent.request(
                "session/set_config_option",
                {
                    "sessionId": live.agent_session_id,
                    "configId": str(option.get("id")),
                    "value": mode_id,
                },
            )
            live.absorb_config_options(result)
        else:
            await live.agent.request(
                "session/set_mode",
                {"sessionId": live.agent_session_id, "modeId": mode_id},
            )
        live.mode_id = mode_id
        if live.modes is not None:
            live.modes["currentModeId"] = mode_id
        await sessions.set_mode(self.pool, live.uuid, mode_id)
        return live.mode_updates != seen

    async def _agent_set_model(self, live: LiveSession, model: str) -> None:
        assert live.agent is not None
        choice = live.model_choice()
        if choice is None:
            raise AgentError("The agent cannot switch models")
        how, config_id, values = choice
        if values and model not in values:
            raise BadRequest(
                f"Invalid model: {model!r} is not offered ({', '.join(values)})"
            )
        if how == "config":
            result = await live.agent.request(
                "session/set_config_option",
                {
                    "sessionId": live.agent_session_id,
                    "configId": config_id,
                    "value": model,
                },
            )
            live.absorb_config_options(result)
        else:
            await live.agent.request(
                "session/set_model",
                {"sessionId": live.agent_session_id, "modelId": model},
            )
            if live.legacy_models is not None:
                live.legacy_models["currentModelId"] = model
        live.model = model
        await sessions.set_model(self.pool, live.uuid, model)

    async def set_mode(
        self, sid: str, mode_id: str, allowed: frozenset[str] | None = None
    ) -> None:
        live, _ = await self.ensure_live(sid, allowed)
        try:
            agent_sent = await self._agent_set_mode(live, mode_id)
        except (AgentRequestFailed, AgentDied, AgentTimeout) as err:
            raise agent_failure(err, "session/set_mode") from err
        if not agent_sent:
            live.emit("current_mode_update", currentModeId=mode_id)
        await live.writer.flush()
        live.last_used = time.monotonic()
        await self._announce(live.workspace_id, sid, {"modeId": mode_id})

    async def set_model(
        self, sid: str, model: str, allowed: frozenset[str] | None = None
    ) -> None:
        live, _ = await self.ensure_live(sid, allowed)
        try:
            await self._agent_set_model(live, model)
        except (AgentRequestFailed, AgentDied, AgentTimeout) as err:
            raise agent_failure(err, "session/set_model") from err
        live.last_used = time.monotonic()
        await self._announce(live.workspace_id, sid, {"model": model})

    def interpret_update(self, live: LiveSession, update: dict[str, Any]) -> None:
        """Side effects of agent updates: persisted mode/model, renames (§3.2)."""
        kind = update.get("sessionUpdate")
        if kind == "current_mode_update":
            mode = update.get("currentModeId") or update.get("modeId")
            live.mode_updates += 1
            if isinstance(mode, str) and mode != live.mode_id:
                live.mode_id = mode
                self.spawn(self._persist(live, "modeId", mode))
        elif kind == "config_option_update":
            options = update.get("configOptions")
            if isinstance(options, list):
                live.config_options = [o for o in options if isinstance(o, dict)]
                model = _current_model(live.config_options, None)
                if model and model != live.model:
                    live.model = model
                    self.spawn(self._persist(live, "model", model))
        elif kind == "session_info_update":
            title = update.get("title")
            if isinstance(title, str) and title.strip():
                name = title.strip()[:NAME_MAX]
                live.emit("session_renamed", name=name)
                self.spawn(self._persist(live, "name", name))

    async def _persist(self, live: LiveSession, wire_field: str, value: str) -> None:
        if wire_field == "modeId":
            await sessions.set_mode(self.pool, live.uuid, value)
        elif wire_field == "model":
            await sessions.set_model(self.pool, live.uuid, value)
        else:
            await sessions.rename(self.pool, live.uuid, value)
        await self._announce(live.workspace_id, live.session_id, {wire_field: value})

    # --- load -------------------------------------------------------------------------
    async def load(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> dict[str, Any]:
        live, mode = await self.ensure_live(sid, allowed)
        live.last_used = time.monotonic()
        return {
            "sessionId": sid,
            "provider": live.provider,
            "role": live.role,
            "acpStatus": live.acp_status,
            "resumeMode": mode,
        }

    # --- control ----------------------------------------------------------------------
    async def stop_quiet(self, sid: str, reason: str) -> bool:
        live = self.live.get(sid)
        if live is None:
            return False
        await self.stop(live, reason=reason, quiet=True)
        return True

    # --- background loops -------------------------------------------------------------
    async def _renew_loop(self) -> None:
        interval = max(self.settings.lease_ttl / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            lives = [lv for lv in self.live.values() if not lv.stopping]
            if not lives:
                continue
            try:
                owned = await sessions.renew_leases_owned(
                    self.pool,
                    self.settings.instance_id,
                    self.settings.lease_ttl,
                    [lv.uuid for lv in lives],
                )
            except (OSError, asyncpg.PostgresError) as err:
                logger.warning("lease renewal failed: %s", err)
                continue
            for live in lives:
                # Another instance adopted it (our lease ran out): two agents must not
                # write one session, so ours stops without touching the row.
                if live.uuid not in owned and not live.stopping:
                    logger.warning("lost the lease of %s; stopping", live.session_id)
                    self.spawn(self.stop(live, reason="lease lost", quiet=True))

    # --- scale-out ----------------------------------------------------------------------
    def is_live_here(self, sid: str) -> bool:
        live = self.live.get(sid)
        return live is not None and not live.stopping

    async def remote_owner(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> str | None:
        """The other instance holding a live lease on `sid`, else None (unknown: None)."""
        session = await sessions.get(self.pool, sid)
        if session is None:
            return None
        self._check_allowed(session.workspace_id, sid, allowed)
        owner = session.owner_instance_id
        return owner if owner and owner != self.settings.instance_id else None

    async def adopt(self, sid: str, dead_owner: str) -> bool:
        """Compare-and-swap the lease from an owner found dead; True when it is ours now."""
        if self.draining or self._closed:
            return False
        # Only the claim: the stored status stays as the dead owner left it, so
        # ensure_live (whose own claim then succeeds) still sees a turn it interrupted.
        previous = await sessions.claim_owner_from(
            self.pool,
            uuid.UUID(sid),
            self.settings.instance_id,
            self.settings.lease_ttl,
            dead_owner,
        )
        return previous is not None

    async def release_stale(self) -> None:
        """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
        released = await sessions.release_instance(self.pool, self.settings.instance_id)
        for sid, workspace_id, acp_status in released:
            await self._announce(
                workspace_id, sid, {"status": "closed", "acpStatus": acp_status}
            )

    async def drain(self, grace: float) -> None:
        """SIGTERM: refuse new work, let running turns finish (up to `grace`), stop agents.

        Stopping writes status closed and releases each lease, so the sessions are
        resumable at once on any other instance.
        """
        self.draining = True

        def running(lv: LiveSession) -> bool:
            return lv.turn is not None and not lv.turn.done

        idle = [lv for lv in self.live.values() if not running(lv)]
        await asyncio.gather(
            *(self.stop(lv, reason="shutdown") for lv in idle), return_exceptions=True
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while True:
                    turns = [
                        lv.turn.future
                        for lv in self.live.values()
                        if lv.turn is not None and running(lv)
                    ]
                    if not turns:
                        break
                    await asyncio.wait(turns, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(
            *(self.stop(lv, reason="shutdown") for lv in list(self.live.values())),
            return_exceptions=True,
        )

    async def _idle_loop(self) -> None:
        timeout = self.settings.agent_idle_timeout
        interval = min(max(timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for live in list(self.live.values()):
                if self.has_subscribers(live.session_id):
                    live.last_used = now
                if (
                    not live.stopping
                    and live.ready.done()
                    and live.turn is None
                    and not live.permissions
                    and now - live.last_used >= timeout
                ):
                    self.spawn(self.stop(live, reason="idle"))


def _start_error(err: Exception, live: LiveSession) -> str:
    tail = live.agent.last_stderr() if live.agent else ""
    if isinstance(err, AgentRequestFailed):
        msg = f"Agent error: {err.message}"
    elif isinstance(err, AgentDied) and live.agent and live.agent.exited.done():
        msg = on_exit_message(live.agent.exited.result(), "")
    elif isinstance(err, OSError):
        msg = f"Cannot start agent: {err}"
    else:
        msg = str(err) or err.__class__.__name__
    if tail and "last stderr" not in msg:
        msg += f"; last stderr: {tail}"
    return msg


def manager_ctx(key: web.AppKey[SessionManager]) -> Any:
    """Cleanup context factory: after Postgres/Redis; stops every agent on exit."""

    async def _ctx(app: web.Application) -> AsyncIterator[None]:
        manager = SessionManager(app[SETTINGS], app[PG_POOL], app[REDIS], app[CHANNELS])
        app[key] = manager
        fanout = app.get(FANOUT)
        if fanout is not None:
            manager.has_subscribers = lambda sid: fanout.subscriber_count(sid) > 0
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.live_agents.set_function(lambda: len(manager.live))
            written, latency = metrics.events_written, metrics.event_write_latency

            def _observe(count: int, seconds: float) -> None:
                written.inc(count)
                latency.observe(seconds)

            manager.on_batch = _observe
        await manager.release_stale()
        manager.start_loops()
        yield
        await manager.close()

    return _ctx
