"""The session manager: the live agents of this instance and the public API over them.

Every state change is written to Postgres (the read side computes effective status from
it and the lease), announced with a lifecycle message, and recorded as an event through
the session's EventWriter, in that order where api.md requires it (§3.2, §9.2, §9.25).
The work itself lives in one module per job: live.py (one session's state), startup.py
(starting an agent), turns.py, permissions.py, modes.py (mode and model), ownership.py
(leases, adoption, draining) and capacity.py (room and idle agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from services.common.keys import CHANNELS, PG_POOL, REDIS, SETTINGS
from services.common.metrics import METRICS
from services.gateway import capacity, modes, ownership, permissions, startup, turns
from services.gateway.agents import AgentRequestFailed, on_exit_message
from services.gateway.confine import agent_user, check_cwd, safe_segment
from services.gateway.eventlog import EventBuffer, EventWriter
from services.gateway.failures import start_failure
from services.gateway.keys import FANOUT
from services.gateway.live import LiveSession, ResumeMode, settle_turn
from services.gateway.mcp import McpPolicy
from services.gateway.startup import StartRequest
from shared.channels import Channels
from shared.db import session_events, sessions, workspaces
from shared.db.connect import Connection, Pool
from shared.errors import (
    AgentError,
    BadRequest,
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

# how long stopping an agent waits for its final state to be stored before tearing down
STOP_STORE_WAIT = 5.0


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
    mcp_servers: list[Any] = field(default_factory=list)  # as McpPolicy.check returns
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
        # what agents may be given and who they run as (checked at start: app.preflight)
        self.mcp = McpPolicy.from_settings(settings)
        self.agent_user = agent_user(settings)
        self.live: dict[str, LiveSession] = {}
        # events waiting for Postgres, all sessions: full, agents' stdout is not read
        self.event_buffer = EventBuffer(settings.event_buffer_bytes)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resume_locks: dict[str, asyncio.Lock] = {}
        self.closed = False
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
            asyncio.create_task(ownership.renew_loop(self), name="lease-renewal"),
            asyncio.create_task(capacity.idle_loop(self), name="idle-sweeper"),
            asyncio.create_task(ownership.sweep_loop(self), name="lease-sweeper"),
        ]

    async def close(self) -> None:
        """Stop every agent (status closed, leases released), then every task."""
        self.closed = True
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
    async def announce(
        self, workspace_id: str, sid: str, changes: dict[str, Any]
    ) -> None:
        await session_changed(
            self.redis, self.channels, "session:updated", sid, workspace_id, changes
        )

    def record_state(
        self,
        live: LiveSession,
        acp_status: str,
        status: str,
        event: dict[str, Any],
        *,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Queue `event` with the new acp_status/status (+ error) as one write.

        The writer stores both in one statement, after everything queued before, so
        whoever reads the new state on the row finds its event in the log. Returns the
        event's position for `flush` and the changed wire fields for `announce`.
        """
        changes: dict[str, Any] = dict(extra or {})
        if acp_status != live.acp_status or error:
            changes["acpStatus"] = acp_status
        if status != live.status:
            changes["status"] = status
        if error:
            changes["acpError"] = error
        live.acp_status, live.status = acp_status, status
        position = live.writer.append(
            event, state=session_events.State(acp_status, status, error)
        )
        return position, changes

    async def set_state(
        self,
        live: LiveSession,
        acp_status: str,
        status: str,
        event: dict[str, Any],
        *,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
        store_wait: float | None = None,
    ) -> None:
        """`record_state`, wait until it is stored, then announce the changed fields.

        `store_wait` bounds the wait (a stop must end while Postgres is down; the
        writer's close then tries a while longer).
        """
        position, changes = self.record_state(
            live, acp_status, status, event, error=error, extra=extra
        )
        try:
            async with asyncio.timeout(store_wait):
                await live.writer.flush(position)
        except TimeoutError:
            logger.warning(
                "acp_status %s of %s not stored yet (Postgres down?)",
                acp_status,
                live.session_id,
            )
        if live.writer.fenced:
            # another instance took the session over: not ours to say (the writer's
            # on_fenced stops the agent here)
            return
        if changes:
            await self.announce(live.workspace_id, live.session_id, changes)

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

    async def _check_parent(self, parent: uuid.UUID, workspace_id: str) -> None:
        """-32004 as for an unknown id unless the parent is a session of the same workspace
        (so of the caller's scope too): no id reaches another workspace's session."""
        if await sessions.workspace_of(self.pool, parent) != workspace_id:
            raise SessionNotFound(str(parent))

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
            cwd = await self.check_cwd(args.workspace_id, args.cwd)
        else:
            cwd = self.settings.cwd_root / safe_segment(args.workspace_id) / sid

        if args.parent_session_id is not None:
            await self._check_parent(args.parent_session_id, args.workspace_id)
        if self.draining:
            raise AgentError("Gateway draining")
        await self.make_room()
        claimed_at = time.monotonic()
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
                    # deleted since _check_parent: unknown now
                    raise SessionNotFound(str(args.parent_session_id)) from err
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
        live = self._register(row, row.lease_generation)
        live.lease_until = claimed_at + self.settings.lease_ttl
        live.acp_status, live.status = "connecting", "idle"
        self.spawn(
            startup.start(
                self,
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

    async def check_cwd(self, workspace_id: str, cwd: str) -> Path:
        """`cwd` resolved when inside the workspace's directory or one of its codebases."""
        repos = await workspaces.repo_paths(self.pool, workspace_id)
        return check_cwd(self.settings, workspace_id, cwd, repos)

    def _register(self, row: sessions.SessionRow, generation: int) -> LiveSession:
        """A live session writing at lease `generation` (the one this instance claimed)."""
        writer = EventWriter(
            self.pool,
            self.redis,
            self.channels,
            uuid.UUID(row.session.session_id),
            on_batch=self.on_batch,
            generation=generation,
            buffer=self.event_buffer,
        )
        live = LiveSession(self, row, writer)
        writer.on_fenced = lambda: self.lease_lost(live)
        self.live[live.session_id] = live
        return live

    def lease_lost(self, live: LiveSession) -> None:
        """Our lease generation is stale: stop the agent here and write nothing more."""
        if live.stopping:
            return
        logger.warning("lost the lease of %s; stopping", live.session_id)
        self.spawn(self.stop(live, reason="lease lost", quiet=True))

    async def holds_lease(self, live: LiveSession) -> bool:
        """Whether a side effect outside the log (fs write, terminal) may still happen."""
        return await ownership.holds_lease(self, live)

    async def make_room(self) -> None:
        """At MAX_SESSIONS stop the least recently used idle agent, else -32000."""
        await capacity.make_room(self)

    # --- agent lifecycle --------------------------------------------------------------
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
                err = start_failure(start_error, live.provider, message)
            elif isinstance(start_error, ProviderUnavailable):
                err = start_error
            live.ready.set_exception(err)
        turn = await turns.end_turn(self, live, error=message, settle=False)
        # the row and the event in one write: whoever sees either finds the other
        await self.set_state(
            live,
            "error",
            "closed",
            gateway_update("acp_status", status="error", error=message),
            error=message,
            store_wait=STOP_STORE_WAIT,
        )
        if turn is not None:
            settle_turn(turn)
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
        turn = await turns.end_turn(
            self, live, error=f"Agent stopped ({reason})", settle=False
        )
        if live.agent is not None:
            await live.agent.stop()
        await self.set_state(
            live,
            "closed",
            "closed",
            gateway_update("acp_status", status="closed"),
            store_wait=STOP_STORE_WAIT,
        )
        if turn is not None:
            settle_turn(turn)
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
            self.check_allowed(live.workspace_id, sid, allowed)
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
            self.check_allowed(row.session.workspace_id, sid, allowed)
            if self.closed:
                raise AgentError("Gateway is shutting down")
            if self.draining:
                raise SessionUnservable("Gateway draining")
            await self.make_room()
            claimed_at = time.monotonic()
            claim = await sessions.claim_owner_from(
                self.pool,
                uuid.UUID(sid),
                self.settings.instance_id,
                self.settings.lease_ttl,
            )
            if claim is None:
                fresh = await sessions.get(self.pool, sid)
                owner = fresh.owner_instance_id if fresh else None
                raise SessionUnservable(
                    f"Session owned by {owner or 'another instance'}"
                )
            live = self._register(row, claim.generation)
            live.lease_until = claimed_at + self.settings.lease_ttl
            live.acp_status = row.session.acp_status
            live.status = "closed"
            # The log, not the status, says whether a turn is open: an owner can die
            # between storing a turn's end and writing its status. Our claim fenced it,
            # so the log cannot change under this read.
            if await session_events.turn_open(self.pool, live.uuid):
                # The previous owner died mid-turn (or was told to stop quietly, which
                # left the row closed): end that turn in the log (§9.25).
                cause = (
                    "the session was closed while it ran"
                    if claim.previous_status == "closed"
                    else "the gateway instance running it was lost"
                )
                live.emit("error", message=f"Turn interrupted: {cause}")
            await self.set_state(
                live,
                "connecting",
                "idle",
                gateway_update("acp_status", status="connecting"),
            )
            self.spawn(startup.start(self, live, StartRequest(resume=True)))
            await self._await_ready(live)
            return live, live.resume_mode

    async def _await_ready(self, live: LiveSession) -> None:
        await live.wait_ready()

    def check_allowed(
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
        self.check_allowed(row.session.workspace_id, sid, allowed)
        return row

    # --- turns ------------------------------------------------------------------------
    async def prompt(
        self,
        sid: str,
        blocks: list[dict[str, Any]],
        text: str,
        allowed: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        return await turns.prompt(self, sid, blocks, text, allowed)

    async def cancel(self, sid: str, allowed: frozenset[str] | None = None) -> None:
        await turns.cancel(self, sid, allowed)

    # --- permissions ------------------------------------------------------------------
    async def request_permission(
        self, live: LiveSession, params: dict[str, Any]
    ) -> dict[str, Any]:
        return await permissions.request_permission(live, params)

    async def respond(
        self,
        sid: str,
        tool_call_id: str,
        option_id: str | None,
        decision: str | None,
        scope: str | None,
        allowed: frozenset[str] | None = None,
    ) -> None:
        await permissions.respond(
            self, sid, tool_call_id, option_id, decision, scope, allowed
        )

    # --- mode and model ---------------------------------------------------------------
    async def set_mode(
        self, sid: str, mode_id: str, allowed: frozenset[str] | None = None
    ) -> None:
        await modes.set_mode(self, sid, mode_id, allowed)

    async def set_model(
        self, sid: str, model: str, allowed: frozenset[str] | None = None
    ) -> None:
        await modes.set_model(self, sid, model, allowed)

    def interpret_update(self, live: LiveSession, update: dict[str, Any]) -> None:
        """Side effects of agent updates: persisted mode/model, renames (§3.2)."""
        modes.interpret_update(self, live, update)

    # --- load -------------------------------------------------------------------------
    async def load(
        self, sid: str, allowed: frozenset[str] | None = None, cwd: str | None = None
    ) -> dict[str, Any]:
        if cwd is not None:
            # checked by the session/new rule, then the stored cwd is used
            row = await self.get_session_or_404(sid, allowed)
            await self.check_cwd(row.session.workspace_id, cwd)
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

    # --- scale-out ----------------------------------------------------------------------
    def is_live_here(self, sid: str) -> bool:
        live = self.live.get(sid)
        return live is not None and not live.stopping

    async def remote_owner(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> str | None:
        """The other instance holding a live lease on `sid`, else None (unknown: None)."""
        return await ownership.remote_owner(self, sid, allowed)

    async def adopt(self, sid: str, dead_owner: str) -> bool:
        """Compare-and-swap the lease from an owner found dead; True when it is ours now."""
        return await ownership.adopt(self, sid, dead_owner)

    async def release_stale(self) -> None:
        """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
        await ownership.release_stale(self)

    async def drain(self, grace: float) -> None:
        """SIGTERM: refuse new work, let running turns finish (up to `grace`), stop agents."""
        await ownership.drain(self, grace)


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
