"""The session actor: one live session's state and everything that changes it.

A LiveSession starts its agent (spawn, initialize, new or load, mode and model, ready),
runs prompt turns (exactly one end event each), cancels them, switches mode and
model, answers permission requests, takes the agent's updates, and fails or stops. Every
state change is written to Postgres together with its event, in one statement of the
session's EventWriter (whoever reads the new state finds its event), then announced with a
lifecycle message.

It gets what it needs from its process through SessionDeps; the SessionManager
(runtime.py) keeps the registry of live sessions and never sits between a call and its
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg

from services.common.metrics import Metrics
from services.gateway import config, options, usage
from services.gateway.agent_sessions import authenticate, farewell, try_resume
from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    on_exit_message,
)
from services.gateway.confine import AgentUser
from services.gateway.elicitation import ElicitationBroker
from services.gateway.eventlog import EventBuffer, EventWriter
from services.gateway.failures import (
    AGENT_FAILURES,
    agent_failure,
    call_failure,
    not_ready,
    start_error,
)
from services.gateway.mcp import McpPolicy
from services.gateway.permissions import PermissionBroker
from services.gateway.spec import agent_spec, prepare_home
from services.gateway.turn import Queued, Turn, consume
from shared.channels import Channels
from shared.db import queued_prompts, session_events, sessions
from shared.db.connect import Pool
from shared.errors import (
    AgentError,
    BadRequest,
    DependencyDown,
    SessionNotFound,
    SessionUnservable,
)
from shared.events import gateway_update
from shared.lifecycle import session_changed
from shared.models.session import NAME_MAX
from shared.providers import get_provider
from shared.redisconn import Redis
from shared.settings import Settings

logger = logging.getLogger(__name__)

ResumeMode = Literal["attached", "resumed", "native", "recreated"]
# what session/prompt does when the session (or its workspace) is busy
IfBusy = Literal["reject", "enqueue", "interrupt"]

# how long session/prompt waits for its user_message while no store of the process
# succeeds before answering that Postgres is down (a busy Postgres is waited for)
USER_MESSAGE_STORE_WAIT = 5.0
# how long a stop waits for its final state to be stored before tearing down (the
# writer's close then tries a while longer)
STOP_STORE_WAIT = 5.0
# How long a turn's reply waits for the search index pass over its events (only a failing
# pass takes long: a 50,000-chunk turn is indexed in well under a second). Past it the reply
# goes; the writer keeps retrying, so the turn becomes searchable a little later.
INDEX_WAIT = 30.0
# Postgres unreachable or failing: the lease checks fall back to their own clock
PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def require_session_id(session_key: str) -> uuid.UUID:
    """A session id from a call as the database keys it; -32004 when it cannot be one."""
    parsed = sessions.parse_session_id(session_key)
    if parsed is None:
        raise SessionNotFound(session_key)
    return parsed


def check_allowed(
    workspace_id: str, session_id: str, allowed: frozenset[str] | None
) -> None:
    """A session outside the caller's workspaces does not exist for it (-32004)."""
    if allowed is not None and workspace_id not in allowed:
        raise SessionNotFound(session_id)


@dataclass(slots=True)
class SessionDeps:
    """What a live session needs from its process, and nothing that leads back to it."""

    settings: Settings
    pool: Pool
    redis: Redis
    channels: Channels
    # runs a coroutine as a task the process owns (cancelled when it closes)
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    # the registry lets go of a session whose agent stopped
    forget: Callable[[LiveSession], None]
    # what agents may be given (mcpServers) and who they run as (AGENT_USER)
    mcp: McpPolicy
    agent_user: AgentUser | None
    # events waiting for Postgres, all sessions: when full, agents' stdout is not read
    event_buffer: EventBuffer
    # metrics: an agent failed, after it was ready (True: a crash) or before
    on_agent_failure: Callable[[bool], None] | None = None
    # metrics: agents' token and cost counters (usage.py)
    metrics: Metrics | None = None
    # SIGTERM: no new sessions or turns here, running turns finish
    draining: bool = False
    closed: bool = False
    # callers waiting for a queued prompt's turn, by queuedPromptId: answered by whichever
    # live session of this instance runs or drops it
    waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    async def announce(
        self, workspace_id: str, session_id: str, changes: dict[str, Any]
    ) -> None:
        await session_changed(
            self.redis,
            self.channels,
            "session:updated",
            session_id,
            workspace_id,
            changes,
        )


@dataclass(slots=True)
class StartRequest:
    """What the agent start needs beyond the row: user choices to apply, resume or not."""

    resume: bool
    user_mode: str | None = None
    user_model: str | None = None


class LiveSession:
    """One session whose agent runs (or starts, or stops) on this instance."""

    def __init__(
        self, deps: SessionDeps, row: sessions.SessionRow, writer: EventWriter
    ) -> None:
        s = row.session
        self._deps = deps
        self.session_id = s.session_id
        self.uuid = uuid.UUID(s.session_id)
        self.workspace_id = s.workspace_id
        self.provider = s.provider
        self.role = s.role
        self.cwd = Path(s.cwd)
        self.mode_id = s.mode_id
        self.model = s.model
        # the agent's own session id: the stored one until the agent gives its own
        self.routa_agent_id = s.routa_agent_id
        # whether the running agent has that session (new, load or resume answered)
        self.agent_session_open = False
        self.custom_command = row.custom_command
        self.custom_args = list(row.custom_args or [])
        self.mcp_servers = list(row.mcp_servers or [])
        self.writer = writer
        self.agent: AgentProcess | None = None
        self.acp_status = "connecting"
        self.status = "idle"
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(consume)
        self.resume_mode: ResumeMode = "recreated"
        self.turn: Turn | None = None
        # prompts waiting for this session's turn, next first (ifBusy enqueue/interrupt)
        self.queue: deque[Queued] = deque()
        # run_next is claiming a workspace slot for the queue's head
        self.starting = False
        # why the session stops (settles queued callers accordingly)
        self._stop_reason = ""
        self.permissions = PermissionBroker(
            self.emit, auto_approve_permissions=row.auto_approve_permissions
        )
        self.elicitations = ElicitationBroker(
            self.emit, timeout=deps.settings.prompt_timeout
        )
        self.capabilities: dict[str, Any] = {}
        self.config_options: list[dict[str, Any]] = []
        self.modes: dict[str, Any] | None = None
        self.legacy_models: dict[str, Any] | None = None
        self.mode_updates = 0
        # one store of the option list at a time, each writing the list current when it
        # runs: the last write is always the latest report
        self._config_lock = asyncio.Lock()
        # the cumulative cost the agent last reported (counted as growth)
        self._last_cost = 0.0
        self.stopping = False
        # set once the agent is reaped and the lease released
        self.closed = asyncio.Event()
        self.last_used = time.monotonic()
        # monotonic time until which our lease surely runs (claim or renewal + LEASE_TTL)
        self.lease_until = 0.0

    # --- state ------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Started, no turn, nobody asked: an agent that may be stopped for room."""
        return (
            self.ready.done()
            and self.turn is None
            and not self.queue
            and not self.permissions.pending
        )

    def check_allowed(self, allowed: frozenset[str] | None) -> None:
        check_allowed(self.workspace_id, self.session_id, allowed)

    def emit(self, kind: str, /, **fields: Any) -> int:
        """Queue a gateway-made event (fields may include `kind`, e.g. a tool call's)."""
        return self.writer.append({"update": {"sessionUpdate": kind, **fields}})

    async def wait_ready(self) -> None:
        await asyncio.shield(self.ready)

    def record_state(
        self,
        acp_status: str,
        status: str,
        event: dict[str, Any],
        *,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Queue `event` with the new acp_status/status (+ error) as one write.

        The writer stores both in one statement, after everything queued before, so
        whoever reads the new state on the row finds its event in the log (and the other
        way round). Returns the event's position for `flush` and the changed wire fields
        for `announce`.
        """
        changes: dict[str, Any] = dict(extra or {})
        if acp_status != self.acp_status or error:
            changes["acpStatus"] = acp_status
        if status != self.status:
            changes["status"] = status
        if error:
            changes["acpError"] = error
        self.acp_status, self.status = acp_status, status
        position = self.writer.append(
            event, state=session_events.State(acp_status, status, error)
        )
        return position, changes

    async def set_state(
        self,
        acp_status: str,
        status: str,
        event: dict[str, Any],
        *,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
        store_wait: float | None = None,
    ) -> None:
        """`record_state`, wait until it is stored, then announce the changed fields.

        `store_wait` bounds the wait (a stop must end while Postgres is down).
        """
        position, changes = self.record_state(
            acp_status, status, event, error=error, extra=extra
        )
        try:
            async with asyncio.timeout(store_wait):
                await self.writer.flush(position)
        except TimeoutError:
            logger.warning(
                "acp_status %s of %s not stored yet (Postgres down?)",
                acp_status,
                self.session_id,
            )
        await self._announce_stored(changes)

    async def release_slot(self) -> None:
        """Give back a workspace turn slot no turn started on: status idle, and no event
        (the claim took it without one). Written after everything queued, so no earlier
        state lands over it; raises like Postgres while the writer cannot store."""
        await self.writer.flush_unless_down(USER_MESSAGE_STORE_WAIT)
        if self.writer.fenced or self.turn is not None:
            return  # not ours any more, or a turn runs on the slot
        await sessions.release_turn_slot(
            self._deps.pool, self.uuid, self.writer.generation
        )
        if self.status != "idle":
            self.status = "idle"
            await self._announce_stored({"status": "idle"})

    async def _announce_stored(self, changes: dict[str, Any]) -> None:
        """Announce a stored state change, unless another instance took the session over
        (then it is not ours to say; the writer's on_fenced stops the agent here)."""
        if changes and not self.writer.fenced:
            await self._deps.announce(self.workspace_id, self.session_id, changes)

    def mode_ids(self) -> list[str] | None:
        return options.mode_ids(self.config_options, self.modes)

    def model_choice(self) -> options.ModelChoice | None:
        return options.model_choice(self.config_options, self.legacy_models)

    # --- the lease --------------------------------------------------------------------
    def lease_lost(self) -> None:
        """Our lease generation is stale: stop the agent here and write nothing more."""
        if self.stopping:
            return
        logger.warning("lost the lease of %s; stopping", self.session_id)
        _ = self._deps.spawn(self.stop(reason="lease lost", quiet=True))

    async def holds_lease(self) -> bool:
        """Before a side effect outside the log (fs write, terminal): is our generation
        current? Without Postgres, our own clock decides: the lease cannot have been
        taken before it ran out.
        """
        generation = self.writer.generation
        if self.writer.fenced:
            return False
        if generation is None:
            return True
        try:
            current = await sessions.holds_generation(
                self._deps.pool, self.uuid, generation
            )
        except PG_ERRORS as err:
            logger.warning("lease check of %s failed: %s", self.session_id, err)
            return time.monotonic() < self.lease_until
        if not current:
            self.lease_lost()
        return current

    # --- the agent's callbacks (agents.AgentCallbacks) --------------------------------
    def on_update(self, params: dict[str, Any]) -> None:
        self.last_used = time.monotonic()
        self.writer.append(params)
        update = params.get("update")
        if isinstance(update, dict):
            self.interpret_update(update)

    def on_stderr(self, line: str) -> None:
        self.writer.append(
            gateway_update("process_output", source="stderr", data=line + "\n")
        )

    def on_exit(self, returncode: int) -> None:
        _ = self._deps.spawn(self._exited(returncode))

    async def request_permission(self, params: dict[str, Any]) -> dict[str, Any]:
        cancelled = self.turn is not None and self.turn.cancel_requested
        return await self.permissions.request(params, turn_cancelled=cancelled)

    def cancel_permission(self, tool_call_id: str) -> None:
        self.permissions.cancel(tool_call_id)

    async def request_elicitation(
        self, elicitation_id: str, params: dict[str, Any], *, withdrawn: bool = False
    ) -> dict[str, Any]:
        cancelled = self.turn is not None and self.turn.cancel_requested
        return await self.elicitations.request(
            elicitation_id, params, withdrawn=withdrawn, turn_cancelled=cancelled
        )

    def cancel_elicitation(self, elicitation_id: str) -> None:
        self.elicitations.cancel(elicitation_id)

    def _cancel_requests(self) -> None:
        """Permission and elicitation requests are held alike and end at the same points."""
        self.permissions.cancel_all()
        self.elicitations.cancel_all()

    # --- start ------------------------------------------------------------------------
    async def start(self, req: StartRequest) -> None:
        """initialize → new (or load) → apply mode/model → ready; any failure → error."""
        try:
            await self._start(req)
        except Exception as err:  # noqa: BLE001 - every failure becomes acp_status error
            if self.stopping:
                if not self.ready.done():
                    self.ready.set_exception(AgentError("Agent stopped while starting"))
                return
            message = start_error(err, self.agent)
            logger.warning("agent start failed for %s: %s", self.session_id, message)
            await self.fail(message, cause=err)

    async def _start(self, req: StartRequest) -> None:
        deps = self._deps
        spec = agent_spec(
            deps.settings,
            session_id=self.session_id,
            workspace_id=self.workspace_id,
            provider_id=self.provider,
            cwd=self.cwd,
            custom_command=self.custom_command,
            custom_args=self.custom_args,
            user=deps.agent_user,
        )
        # the stored list, checked again: nothing the current policy refuses reaches an agent
        mcp_servers = deps.mcp.for_agent(self.mcp_servers)
        await asyncio.to_thread(self.cwd.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(
            prepare_home, spec.home, self.provider, deps.settings.opencode_config
        )
        agent = AgentProcess(spec, self, deps.event_buffer)
        self.agent = agent
        await agent.start()
        init = await agent.initialize()
        caps = init.get("agentCapabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        await authenticate(agent, init)
        provider = get_provider(self.provider)
        stored_id = self.routa_agent_id
        native = (
            req.resume
            and provider is not None
            and provider.resume_mode in ("native", "both")
            and bool(self.capabilities.get("loadSession"))
            and bool(stored_id)
        )
        resumed = (
            await try_resume(agent, self.capabilities, stored_id, self.cwd, mcp_servers)
            if req.resume
            else None
        )
        result: Any
        if resumed is not None:
            result = resumed
            self.resume_mode = "resumed"
        elif native:
            agent.suppress_updates = True  # history is already in our log
            try:
                result = await agent.request(
                    "session/load",
                    {
                        "sessionId": stored_id,
                        "cwd": str(self.cwd),
                        "mcpServers": mcp_servers,
                    },
                )
            finally:
                agent.suppress_updates = False
            self.resume_mode = "native"
        else:
            result = await agent.request(
                "session/new", {"cwd": str(self.cwd), "mcpServers": mcp_servers}
            )
            if not isinstance(result, dict) or not isinstance(
                result.get("sessionId"), str
            ):
                raise AgentRequestFailed(
                    -32603, "session/new answered without sessionId"
                )
            self.routa_agent_id = result["sessionId"]
            self.resume_mode = "recreated"
        self.agent_session_open = True
        self._absorb(result if isinstance(result, dict) else {})
        extra: dict[str, Any] = {}
        if self.routa_agent_id != stored_id:
            assert self.routa_agent_id is not None
            await sessions.set_agent_id(deps.pool, self.uuid, self.routa_agent_id)
            extra["routaAgentId"] = self.routa_agent_id
        # The user's (or the stored) mode and model win; else take the agent's.
        want_mode = req.user_mode or self.mode_id
        agent_mode = (options.mode_option(self.config_options) or {}).get(
            "currentValue"
        ) or (self.modes or {}).get("currentModeId")
        if want_mode and want_mode != agent_mode:
            await self._agent_set_mode(want_mode)
        elif not want_mode and isinstance(agent_mode, str):
            self.mode_id = agent_mode
            await sessions.set_mode(deps.pool, self.uuid, agent_mode)
            extra["modeId"] = agent_mode
        want_model = req.user_model or self.model
        agent_model = options.current_model(self.config_options, self.legacy_models)
        if want_model and want_model != agent_model:
            await self._agent_set_model(want_model)
        elif not want_model and agent_model:
            self.model = agent_model
            await sessions.set_model(deps.pool, self.uuid, agent_model)
            extra["model"] = agent_model
        if self.stopping:
            raise AgentDied("stopped while starting")
        position, changes = self.record_state(
            "ready", "idle", gateway_update("acp_status", status="ready"), extra=extra
        )
        # ready here before the row and the log say so: whoever reads ready there finds
        # the session usable (idle for MAX_SESSIONS); its next events queue behind this one
        self.last_used = time.monotonic()
        if not self.ready.done():
            self.ready.set_result(None)
        await self.writer.flush(position)
        await self._announce_stored(changes)
        if self.queue:
            # queued before a restart or a crash: they run now, in order
            _ = self._deps.spawn(self.run_next())

    def _absorb(self, result: dict[str, Any]) -> None:
        """What session/new or session/load says the agent offers."""
        modes = result.get("modes")
        if isinstance(modes, dict):
            self.modes = modes
        config_options = options.config_options_of(result)
        if config_options is not None:
            self._remember_config(config_options)
        models = result.get("models")
        if isinstance(models, dict):
            self.legacy_models = models

    def _running_agent(self) -> AgentProcess:
        assert self.agent is not None
        return self.agent

    # --- turns ------------------------------------------------------------------------
    async def prompt(
        self,
        blocks: list[dict[str, Any]],
        text: str,
        meta: dict[str, Any] | None = None,
        if_busy: IfBusy = "reject",
    ) -> dict[str, Any]:
        """Store the user's message, run the turn; its reply, or pending after PROMPT_TIMEOUT.

        `meta`: the client's `_meta` (with a traceparent), passed to the agent unchanged.
        `if_busy`: what to do while a turn runs or prompts wait here, or while the
        workspace runs its `maxConcurrentTurns`: refuse, queue, or cancel and go next.
        """
        if self._deps.draining:
            raise SessionUnservable("Gateway draining")
        if self.turn is not None or self.queue or self.starting:
            if if_busy == "reject":
                raise AgentError("A prompt is already running for this session")
            return await self._wait_queued(
                await self._enqueue(blocks, text, meta, if_busy)
            )
        turn = Turn.begin(meta)
        self.turn = turn
        try:
            slot = await self._claim_slot()
        except BaseException:
            if self.turn is turn:
                self.turn = None
            raise
        if not slot.granted:
            if self.turn is turn:
                self.turn = None
            if if_busy == "reject":
                raise AgentError(
                    "Workspace turn limit reached",
                    data={
                        "workspaceId": self.workspace_id,
                        "maxConcurrentTurns": slot.cap,
                    },
                )
            # nothing of this session's to interrupt: it waits for room like a queued one
            return await self._wait_queued(
                await self._enqueue(blocks, text, meta, if_busy)
            )
        await self._begin(turn, blocks, text)
        try:
            async with asyncio.timeout(self._deps.settings.prompt_timeout):
                return await asyncio.shield(turn.future)
        except TimeoutError:
            return {"sessionId": self.session_id, "pending": True}

    async def _claim_slot(self) -> sessions.TurnSlot:
        """Room for a turn under the workspace's maxConcurrentTurns (always without one)."""
        try:
            return await sessions.claim_turn_slot(
                self._deps.pool, self.uuid, self.workspace_id, self.writer.generation
            )
        except PG_ERRORS as err:
            raise DependencyDown(
                "Postgres unavailable: the prompt could not be started"
            ) from err

    async def _begin(self, turn: Turn, blocks: list[dict[str, Any]], text: str) -> None:
        """The user's message in the log, status active, then the agent's turn."""
        self.last_used = time.monotonic()
        try:
            # the user's message is in the log before the agent sees it, with status
            # active in the same write
            content: dict[str, Any] = {"content": {"type": "text", "text": text}}
            if turn.queued_id is not None:
                content["queuedPromptId"] = turn.queued_id
            stored, changes = self.record_state(
                self.acp_status, "active", turn.traced("user_message", **content)
            )
            try:
                await self.writer.flush_unless_down(USER_MESSAGE_STORE_WAIT, stored)
            except TimeoutError as err:
                # Postgres is down: answer now instead of hanging (the writer retries)
                raise DependencyDown(
                    "Postgres unavailable: the prompt could not be stored"
                ) from err
            if self.writer.fenced:
                # not stored: another instance owns the session now; the prompt can go there
                raise SessionUnservable(
                    "Session taken over by another gateway instance"
                )
            await self._announce_stored(changes)
        except BaseException as err:
            if self.turn is turn:
                self.turn = None
            # the user_message is (or will be) stored: its turn ends there too
            reason = getattr(err, "message", None) or err.__class__.__name__
            message = f"The prompt was not started: {reason}"
            if self.stopping:
                # the stop writes the final state after it
                self.emit("error", message=message)
            else:
                # status idle with it (one write): the workspace slot is free again
                self.record_state(
                    self.acp_status, "idle", gateway_update("error", message=message)
                )
            raise
        if turn.cancel_requested:
            # cancelled (or interrupted) before the agent saw it
            await self.end_turn(turn, result={"stopReason": "cancelled"})
            return
        turn.task = self._deps.spawn(self._run_turn(turn, blocks))

    # --- the queue (ifBusy enqueue / interrupt) ---------------------------------------
    async def _enqueue(
        self,
        blocks: list[dict[str, Any]],
        text: str,
        meta: dict[str, Any] | None,
        if_busy: IfBusy,
    ) -> tuple[Queued, asyncio.Future[dict[str, Any]]]:
        """Queue the prompt (enqueue: stored, `prompt_queued`; interrupt: next, in memory,
        and the running turn cancelled); the future its caller waits on."""
        entry = Queued(
            str(uuid.uuid4()), blocks, text, meta, durable=if_busy == "enqueue"
        )
        waiter: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        waiter.add_done_callback(consume)
        self._deps.waiters[entry.id] = waiter
        if not entry.durable:
            self.queue.appendleft(entry)
            await self.cancel()
            return entry, waiter
        # its place is taken now: two prompts queued at once keep the order they came in
        self.queue.append(entry)
        position = len(self.queue)
        try:
            await queued_prompts.insert(
                self._deps.pool, uuid.UUID(entry.id), self.uuid, blocks, text, meta
            )
        except BaseException as err:
            with contextlib.suppress(ValueError):
                self.queue.remove(entry)
            self._deps.waiters.pop(entry.id, None)
            if isinstance(err, PG_ERRORS):
                raise DependencyDown(
                    "Postgres unavailable: the prompt could not be queued"
                ) from err
            raise
        self.emit("prompt_queued", queuedPromptId=entry.id, position=position)
        logger.info(
            "prompt %s queued for %s at %d", entry.id, self.session_id, position
        )
        return entry, waiter

    async def _wait_queued(
        self, queued: tuple[Queued, asyncio.Future[dict[str, Any]]]
    ) -> dict[str, Any]:
        """The queued prompt's own reply: its turn's, or pending after PROMPT_TIMEOUT."""
        entry, waiter = queued
        try:
            async with asyncio.timeout(self._deps.settings.prompt_timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return {"sessionId": self.session_id, "pending": True}
        finally:
            if self._deps.waiters.get(entry.id) is waiter:
                del self._deps.waiters[entry.id]

    def _answer(self, queued_id: str, outcome: dict[str, Any] | BaseException) -> None:
        waiter = self._deps.waiters.get(queued_id)
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    async def run_next(self) -> None:
        """Start the queue's head when no turn runs here and the workspace has room.

        Called when a turn ends, when the agent is ready, and by the manager's queue loop
        (a workspace slot freed elsewhere). Refused room leaves the head where it is.
        """
        if (
            self.turn is not None
            or self.starting
            or not self.queue
            or self.stopping
            or self._deps.draining
            or not self.ready.done()
            or self.ready.exception() is not None
        ):
            return
        self.starting = True
        try:
            slot = await sessions.claim_turn_slot(
                self._deps.pool, self.uuid, self.workspace_id, self.writer.generation
            )
            if not slot.granted:
                return
            if not self._may_start_head():
                # dropped, stopped or started meanwhile
                if slot.cap is not None and not self.stopping:
                    await self.release_slot()
                return
            # the head now: an interrupt may have come first while we waited
            entry = self.queue.popleft()
            turn = Turn.begin(entry.meta)
            turn.queued_id = entry.id
            self.turn = turn
        except PG_ERRORS as err:
            logger.warning("queue of %s not advanced: %s", self.session_id, err)
            return
        finally:
            self.starting = False
        try:
            if entry.durable and not await queued_prompts.delete(
                self._deps.pool, self.uuid, uuid.UUID(entry.id)
            ):
                # dropped meanwhile through another instance or a disconnect
                self.turn = None
                if slot.cap is not None:
                    await self.release_slot()
                self._answer(entry.id, {"stopReason": "cancelled"})
                _ = self._deps.spawn(self.run_next())
                return
        except PG_ERRORS as err:
            # still stored: it runs when Postgres answers again
            self.turn = None
            self.queue.appendleft(entry)
            logger.warning("queue of %s not advanced: %s", self.session_id, err)
            return
        waiter = self._deps.waiters.get(entry.id)
        if waiter is not None:
            turn.future.add_done_callback(lambda fut: relay(fut, waiter))
        try:
            await self._begin(turn, entry.blocks, entry.text)
        except Exception as err:  # noqa: BLE001 - its caller gets it; the log has the end
            self._answer(entry.id, err)

    def _may_start_head(self) -> bool:
        return bool(self.queue) and not self.stopping and self.turn is None

    async def drop_queued(self, queued_id: str) -> bool:
        """session/cancel with queuedPromptId: take it off the queue (its caller is told
        `cancelled`), or cancel its turn when it runs already. False: not here."""
        for entry in self.queue:
            if entry.id == queued_id:
                self.queue.remove(entry)
                if entry.durable:
                    await queued_prompts.delete(
                        self._deps.pool, self.uuid, uuid.UUID(queued_id)
                    )
                    self.emit("prompt_dropped", queuedPromptId=queued_id)
                    await self.writer.flush()
                self._answer(queued_id, {"stopReason": "cancelled"})
                return True
        if self.turn is not None and self.turn.queued_id == queued_id:
            await self.cancel()
            return True
        return False

    async def _settle_queue(self) -> None:
        """The session stops here: what its queued callers are told.

        Stored prompts stay queued unless a disconnect or delete dropped them (their rows
        are gone: `cancelled`). After a crash they run when the session is resumed, here
        or elsewhere, so their callers keep waiting; when this instance lets the session
        go (shutdown, lease lost) they answer `pending`. An interrupt fails like the turn
        it cancelled.
        """
        reason = self._stop_reason
        entries = list(self.queue)
        self.queue.clear()
        if not entries:
            return
        stored: set[str] | None = None
        if reason not in ("deleted", "disconnected"):
            with contextlib.suppress(*PG_ERRORS):
                rows = await queued_prompts.for_session(self._deps.pool, self.uuid)
                stored = {row.queued_prompt_id for row in rows}
        for entry in entries:
            if not entry.durable:
                self._answer(entry.id, AgentError(f"Agent stopped ({reason})"))
            elif reason in ("deleted", "disconnected") or (
                stored is not None and entry.id not in stored
            ):
                self._answer(entry.id, {"stopReason": "cancelled"})
            elif reason in ("shutdown", "lease lost"):
                self._answer(entry.id, {"sessionId": self.session_id, "pending": True})

    async def _run_turn(self, turn: Turn, blocks: list[dict[str, Any]]) -> None:
        agent = self._running_agent()
        try:
            result = await agent.request(
                "session/prompt",
                {
                    "sessionId": self.routa_agent_id,
                    "prompt": blocks,
                    **({"_meta": turn.meta} if turn.meta else {}),
                },
                timeout=None,
            )
        except AgentDied:
            # The exit handler knows the exit code and ends the turn; make sure it runs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(agent.exited)
            if not turn.done and not self.stopping:
                await self.fail("Agent closed its connection")
            return
        except AgentRequestFailed as err:
            if turn.cancel_requested:
                await self.end_turn(turn, result={"stopReason": "cancelled"})
            else:
                await self.end_turn(
                    turn,
                    error=f"Agent error: {err.message}",
                    exc=call_failure(err, self.provider, "session/prompt"),
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
            usage.count_tokens(self._deps.metrics, self.provider, result["usage"])
        await self.end_turn(turn, result=reply)

    async def end_turn(
        self,
        turn: Turn | None = None,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        exc: AgentError | None = None,
        settle: bool = True,
    ) -> Turn | None:
        """Exactly one turn_complete or error per turn, stored before the reply.

        With settle=False the caller answers the prompt later (`Turn.settle`), after it
        has stored what must precede the reply (acp_status error on a crash).
        """
        turn = turn or self.turn
        if turn is None or turn.done:
            return None
        turn.done = True
        if turn.watchdog is not None and turn.watchdog is not asyncio.current_task():
            turn.watchdog.cancel()
        if error is not None:
            event = gateway_update("error", message=error)
        else:
            assert result is not None
            event = turn.traced("turn_complete", **result)
        changes: dict[str, Any] = {}
        if self.stopping:
            self.writer.append(event)  # the caller writes the final state after it
        else:
            # the turn's end and status idle: one write
            _, changes = self.record_state(self.acp_status, "idle", event)
        self._cancel_requests()
        await self.writer.flush()
        if self.writer.fenced:
            # not stored: the instance that took the session over ended this turn instead
            result, error, exc = (
                None,
                "Session taken over by another gateway instance",
                None,
            )
        if self.turn is turn:
            self.turn = None
        self.permissions.turn_ended()
        self.last_used = time.monotonic()
        await self._announce_stored(changes)
        await self._wait_indexed()
        turn.outcome = result if error is None else (exc or AgentError(error))
        if settle:
            turn.settle()
        if self.queue and not self.stopping:
            _ = self._deps.spawn(self.run_next())
        return turn

    async def _wait_indexed(self) -> None:
        """The reply of a prompt comes once its prompt and messages are searchable."""
        try:
            async with asyncio.timeout(INDEX_WAIT):
                await self.writer.indexed()
        except TimeoutError:
            logger.warning(
                "turn of %s answered before its search index pass ended",
                self.session_id,
            )

    async def cancel(self) -> None:
        """session/cancel: ask the agent; the watchdog ends the turn if it does not."""
        turn = self.turn
        if turn is None or turn.done:
            return
        turn.cancel_requested = True
        if turn.task is None:
            return  # not begun: it ends as cancelled once its user_message is stored
        self._cancel_requests()
        if self.agent is not None and self.agent_session_open:
            await self.agent.notify(
                "session/cancel", {"sessionId": self.routa_agent_id}
            )
        if turn.watchdog is None:
            turn.watchdog = self._deps.spawn(self._watchdog(turn))

    async def _watchdog(self, turn: Turn) -> None:
        await asyncio.sleep(self._deps.settings.cancel_watchdog)
        if not turn.done:
            logger.info("cancel watchdog ended the turn of %s", self.session_id)
            await self.end_turn(turn, result={"stopReason": "cancelled"})

    # --- permissions ------------------------------------------------------------------
    def respond(
        self,
        tool_call_id: str,
        option_id: str | None,
        decision: str | None,
        scope: str | None,
    ) -> None:
        """The user's answer to a pending permission request."""
        self.permissions.respond(tool_call_id, option_id, decision, scope)
        self.last_used = time.monotonic()

    def respond_elicitation(
        self, elicitation_id: str, action: str, content: dict[str, Any] | None
    ) -> None:
        """The user's answer to a pending elicitation request."""
        self.elicitations.respond(elicitation_id, action, content)
        self.last_used = time.monotonic()

    # --- mode, model and config options -----------------------------------------------
    async def set_mode(self, mode_id: str) -> None:
        try:
            agent_sent = await self._agent_set_mode(mode_id)
        except AGENT_FAILURES as err:
            raise agent_failure(err, "session/set_mode") from err
        if not agent_sent:
            self.emit("current_mode_update", currentModeId=mode_id)
        await self.writer.flush()
        self.last_used = time.monotonic()
        await self._deps.announce(
            self.workspace_id, self.session_id, {"modeId": mode_id}
        )

    async def set_model(self, model: str) -> None:
        try:
            await self._agent_set_model(model)
        except AGENT_FAILURES as err:
            raise agent_failure(err, "session/set_model") from err
        self.last_used = time.monotonic()
        await self._deps.announce(self.workspace_id, self.session_id, {"model": model})

    async def _agent_set_mode(self, mode_id: str) -> bool:
        """Ask the agent; True when the agent sent current_mode_update itself."""
        agent = self._running_agent()
        known = self.mode_ids()
        if known is not None and mode_id not in known:
            raise BadRequest(
                f"Invalid modeId: {mode_id!r} is not offered ({', '.join(known)})"
            )
        seen = self.mode_updates
        option = options.mode_option(self.config_options)
        if option is not None:
            result = await agent.request(
                "session/set_config_option",
                {
                    "sessionId": self.routa_agent_id,
                    "configId": str(option.get("id")),
                    "value": mode_id,
                },
            )
            self._absorb_config_options(result)
            self._remember_config()
        else:
            await agent.request(
                "session/set_mode",
                {"sessionId": self.routa_agent_id, "modeId": mode_id},
            )
        self.mode_id = mode_id
        if self.modes is not None:
            self.modes["currentModeId"] = mode_id
        await sessions.set_mode(self._deps.pool, self.uuid, mode_id)
        return self.mode_updates != seen

    async def _agent_set_model(self, model: str) -> None:
        agent = self._running_agent()
        choice = self.model_choice()
        if choice is None:
            raise AgentError("The agent cannot switch models")
        how, config_id, values = choice
        if values and model not in values:
            raise BadRequest(
                f"Invalid model: {model!r} is not offered ({', '.join(values)})"
            )
        if how == "config":
            result = await agent.request(
                "session/set_config_option",
                {
                    "sessionId": self.routa_agent_id,
                    "configId": config_id,
                    "value": model,
                },
            )
            self._absorb_config_options(result)
            self._remember_config()
        else:
            await agent.request(
                "session/set_model",
                {"sessionId": self.routa_agent_id, "modelId": model},
            )
            if self.legacy_models is not None:
                self.legacy_models["currentModelId"] = model
        self.model = model
        await sessions.set_model(self._deps.pool, self.uuid, model)

    async def set_config_option(
        self, config_id: str, value: str | bool
    ) -> dict[str, Any]:
        """Pass the option to the agent; persist model/mode when it is that option."""
        option = config.find_option(self.config_options, config_id)
        params = config.request_params(self.routa_agent_id, option, value)
        agent = self._running_agent()
        try:
            result = await agent.request("session/set_config_option", params)
        except AGENT_FAILURES as err:
            raise agent_failure(err, "session/set_config_option") from err
        config_options = options.config_options_of(result)
        if config_options is not None:
            self.config_options = config_options
            # stored before the reply: the next context read shows it
            await self._store_config()
        pool = self._deps.pool
        changes: dict[str, Any] = {}
        category = option.get("category")
        if isinstance(value, str) and (category == "model" or config_id == "model"):
            self.model = value
            await sessions.set_model(pool, self.uuid, value)
            changes["model"] = value
        elif isinstance(value, str) and (category == "mode" or config_id == "mode"):
            self.mode_id = value
            if self.modes is not None:
                self.modes["currentModeId"] = value
            await sessions.set_mode(pool, self.uuid, value)
            changes["modeId"] = value
        await self.writer.flush()
        self.last_used = time.monotonic()
        if changes:
            await self._deps.announce(self.workspace_id, self.session_id, changes)
        return {"configOptions": self.config_options}

    def _remember_config(
        self, config_options: list[dict[str, Any]] | None = None
    ) -> None:
        """Take the agent's (complete) list; store it on the session row in the background."""
        if config_options is not None:
            self.config_options = config_options
        _ = self._deps.spawn(self._store_config())

    async def _store_config(self) -> None:
        async with self._config_lock:
            try:
                await sessions.set_config_options(
                    self._deps.pool, self.uuid, list(self.config_options)
                )
            except (OSError, asyncpg.PostgresError):
                # a summary for the read side; the next report writes it again
                return

    def _absorb_config_options(self, result: Any) -> None:
        """Keep the complete option list an agent returns from set_config_option."""
        config = options.config_options_of(result)
        if config is not None:
            self.config_options = config

    # --- what agent updates change ---------------------------------------------
    def interpret_update(self, update: dict[str, Any]) -> None:
        """Side effects of agent updates: persisted mode/model, renames."""
        kind = update.get("sessionUpdate")
        if kind == "current_mode_update":
            mode = update.get("currentModeId") or update.get("modeId")
            self.mode_updates += 1
            if isinstance(mode, str) and mode != self.mode_id:
                self.mode_id = mode
                _ = self._deps.spawn(self._persist("modeId", mode))
        elif kind == "config_option_update":
            config_options = options.config_options_of(update)
            if config_options is not None:
                self._remember_config(config_options)
                model = options.current_model(config_options, None)
                if model and model != self.model:
                    self.model = model
                    _ = self._deps.spawn(self._persist("model", model))
        elif kind == "usage_update":
            # already queued for the log: count its cost, announce the sums
            self._last_cost = usage.count_cost(
                self._deps.metrics, self.provider, self._last_cost, update
            )
            _ = self._deps.spawn(self._announce_usage())
        elif kind == "session_info_update":
            title = update.get("title")
            if isinstance(title, str) and title.strip():
                name = title.strip()[:NAME_MAX]
                self.emit("session_renamed", name=name)
                _ = self._deps.spawn(self._persist("name", name))

    async def _announce_usage(self) -> None:
        """Once the event is stored (the trigger summed it), tell readers the new `usage`."""
        await self.writer.flush()
        try:
            session = await sessions.get(self._deps.pool, self.uuid)
        except (OSError, asyncpg.PostgresError):
            return
        if session is not None and session.usage is not None:
            await self._deps.announce(
                self.workspace_id, self.session_id, {"usage": session.usage}
            )

    async def _persist(self, wire_field: str, value: str) -> None:
        pool = self._deps.pool
        if wire_field == "modeId":
            await sessions.set_mode(pool, self.uuid, value)
        elif wire_field == "model":
            await sessions.set_model(pool, self.uuid, value)
        else:
            await sessions.rename(pool, self.uuid, value)
        await self._deps.announce(
            self.workspace_id, self.session_id, {wire_field: value}
        )

    # --- failing and stopping ---------------------------------------------------------
    async def fail(self, message: str, *, cause: Exception | None = None) -> None:
        """acp_status error + status closed; stop the agent; the session stays resumable."""
        was_ready = self.ready.done()
        if not self.stopping:
            self._stop_reason = "error"
        if self._begin_stop(not_ready(message, cause, self.provider)):
            if self._deps.on_agent_failure is not None:
                self._deps.on_agent_failure(was_ready)
            await self._shut_down(message, "error", error=message, stop_agent=False)

    async def stop(self, *, reason: str, quiet: bool = False) -> None:
        """Stop the agent on purpose (idle, capacity, shutdown, control message).

        Quiet: the query service already wrote state and events for it.
        """
        if not self.stopping:
            self._stop_reason = reason
        if not self._begin_stop(AgentError(f"Agent stopped ({reason})")):
            return
        # close/delete, when offered
        if self.agent_session_open:
            await farewell(self.agent, self.capabilities, self.routa_agent_id, reason)
        if quiet:
            turn = self.turn
            if turn is not None and not turn.done:
                self.turn = None
                turn.abandon(AgentError(f"Session {reason}"))
            await self._teardown(release=reason != "deleted")
            return
        await self._shut_down(f"Agent stopped ({reason})", "closed", stop_agent=True)

    async def _exited(self, returncode: int) -> None:
        """The agent died on its own: noticed at once."""
        tail = self.agent.last_stderr() if self.agent else ""
        await self.fail(on_exit_message(returncode, tail))

    def _begin_stop(self, not_ready_error: Exception) -> bool:
        """Once per session: nothing new starts; False when it is already stopping."""
        if self.stopping:
            return False
        self.stopping = True
        self._cancel_requests()
        if not self.ready.done():
            self.ready.set_exception(not_ready_error)
        return True

    async def _shut_down(
        self,
        turn_error: str,
        acp_status: str,
        *,
        error: str | None = None,
        stop_agent: bool,
    ) -> None:
        """The one shutdown sequence: end the turn, (stop the agent,) the row with its
        event (one write: whoever sees either finds the other), then the prompt's reply,
        then teardown.
        """
        turn = await self.end_turn(error=turn_error, settle=False)
        if stop_agent and self.agent is not None:
            await self.agent.stop()
        fields: dict[str, Any] = {"status": acp_status}
        if error is not None:
            fields["error"] = error
        await self.set_state(
            acp_status,
            "closed",
            gateway_update("acp_status", **fields),
            error=error,
            store_wait=STOP_STORE_WAIT,
        )
        if turn is not None:
            turn.settle()
        await self._teardown()

    async def _teardown(self, *, release: bool = True) -> None:
        if self.agent is not None:
            await self.agent.stop()
        if release:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await sessions.release_owner(
                    self._deps.pool, self.uuid, self._deps.settings.instance_id
                )
        await self.writer.close()
        await self._settle_queue()
        self._deps.forget(self)
        self.closed.set()


def relay(
    source: asyncio.Future[dict[str, Any]], target: asyncio.Future[dict[str, Any]]
) -> None:
    """A queued prompt's turn ended: its caller gets the same reply."""
    if target.done() or source.cancelled():
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
