"""The session manager: the registry of this instance's live sessions.

It creates sessions (session/new) and resumes them here (session/load, and any call to
a session whose agent is not running), keeps room (capacity.py) and leases
(ownership.py). Everything a session does is the session's own (live.LiveSession):
methods look the session up here, then call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from services.gateway.capacity import Capacity
from services.gateway.confine import agent_user, check_cwd, safe_segment
from services.gateway.eventlog import EventBuffer, EventWriter
from services.gateway.live import (
    PG_ERRORS,
    LiveSession,
    ResumeMode,
    SessionDeps,
    StartRequest,
    check_allowed,
    require_session_id,
)
from services.gateway.mcp import McpPolicy
from services.gateway.ownership import Leases
from services.gateway.params import NewParams
from services.gateway.spec import provider_command
from services.gateway.turn import Queued
from shared.channels import Channels
from shared.db import queued_prompts, session_events, sessions, workspaces
from shared.db.connect import Connection, Pool
from shared.errors import (
    AgentError,
    BadRequest,
    SessionNotFound,
    SessionUnservable,
    UnknownWorkspace,
)
from shared.events import encode, encode_batch, gateway_update, publish, store
from shared.lifecycle import session_changed_with_events
from shared.providers import get_provider
from shared.redisconn import Redis
from shared.settings import Settings

logger = logging.getLogger(__name__)

# How often queued prompts waiting for room in their workspace try again, and how often
# the queues that no live owner runs (a restart, a crash) are looked for.
QUEUE_TICK = 0.25
ORPHAN_QUEUE_TICK = 1.0
ORPHAN_BATCH = 20
# after a failed resume of a queued session: first wait, doubling up to the longest
ORPHAN_RETRY = 2.0
ORPHAN_RETRY_MAX = 60.0


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
        self.deps = SessionDeps(
            settings,
            pool,
            redis,
            channels,
            spawn=self.spawn,
            forget=self._forget,
            # what agents may be given and who they run as (checked at start: app.preflight)
            mcp=McpPolicy.from_settings(settings),
            agent_user=agent_user(settings),
            event_buffer=EventBuffer(settings.event_buffer_bytes),
        )
        self.capacity = Capacity(self.deps, self.live)
        self.leases = Leases(self.deps, self.live)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resume_locks: dict[str, asyncio.Lock] = {}
        self._loops: list[asyncio.Task[None]] = []
        # queued sessions whose resume failed: (next attempt, wait), by session id
        self._orphan_retry: dict[str, tuple[float, float]] = {}
        # set by the app: (events, seconds) of each stored batch, for metrics
        self.on_batch: Callable[[int, float], None] | None = None

    @property
    def draining(self) -> bool:
        """SIGTERM: no new sessions or turns here, running turns finish (drain())."""
        return self.deps.draining

    @property
    def closed(self) -> bool:
        return self.deps.closed

    @property
    def mcp(self) -> McpPolicy:
        return self.deps.mcp

    # --- tasks ------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task this manager owns (cancelled on close)."""
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
            asyncio.create_task(self.leases.renew_loop(), name="lease-renewal"),
            asyncio.create_task(self.capacity.idle_loop(), name="idle-sweeper"),
            asyncio.create_task(self.leases.sweep_loop(), name="lease-sweeper"),
            asyncio.create_task(self.queue_loop(), name="prompt-queues"),
        ]

    async def close(self) -> None:
        """Stop every agent (status closed, leases released), then every task."""
        self.deps.closed = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(
            *(live.stop(reason="shutdown") for live in list(self.live.values())),
            return_exceptions=True,
        )
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=10.0)
            if stuck:
                logger.error("%d session tasks did not stop: %s", len(stuck), stuck)

    async def drain(self, grace: float) -> None:
        """SIGTERM: refuse new work, let running turns finish (up to `grace`), stop agents."""
        await self.leases.drain(grace)

    # --- the registry -----------------------------------------------------------------
    def _register(
        self, row: sessions.SessionRow, generation: int, claimed_at: float
    ) -> LiveSession:
        """A live session writing at lease `generation` (the one this instance claimed)."""
        writer = EventWriter(
            self.pool,
            self.redis,
            self.channels,
            uuid.UUID(row.session.session_id),
            workspace_id=row.session.workspace_id,
            on_batch=self.on_batch,
            generation=generation,
            buffer=self.deps.event_buffer,
        )
        live = LiveSession(self.deps, row, writer)
        writer.on_fenced = live.lease_lost
        live.lease_until = claimed_at + self.settings.lease_ttl
        self.live[live.session_id] = live
        return live

    def _forget(self, live: LiveSession) -> None:
        if self.live.get(live.session_id) is live:
            del self.live[live.session_id]

    def is_live_here(self, session_id: str) -> bool:
        live = self.live.get(session_id)
        return live is not None and not live.stopping

    async def find(
        self, session_id: str, allowed: frozenset[str] | None = None
    ) -> LiveSession | None:
        """The session's live agent here, else None; -32004 when there is no session."""
        live = self.live.get(session_id)
        if live is None:
            await self.get_session_or_404(session_id, allowed)
            return None
        live.check_allowed(allowed)
        return live

    async def session(
        self, session_id: str, allowed: frozenset[str] | None = None
    ) -> LiveSession:
        """The live session, resumed here first when its agent is not running."""
        live, _ = await self.ensure_live(session_id, allowed)
        return live

    async def get_session_or_404(
        self, session_id: str, allowed: frozenset[str] | None = None
    ) -> sessions.SessionRow:
        row = await sessions.get_row(self.pool, require_session_id(session_id))
        if row is None:
            raise SessionNotFound(session_id)
        check_allowed(row.session.workspace_id, session_id, allowed)
        return row

    async def stop_quiet(self, session_id: str, reason: str) -> bool:
        """Stop an agent whose state the query service wrote (control message)."""
        live = self.live.get(session_id)
        if live is None:
            return False
        await live.stop(reason=reason, quiet=True)
        return True

    # --- session/new ------------------------------------------------------------------
    async def create(self, args: NewParams) -> dict[str, Any]:
        """Insert the row and event 1, announce, start the agent in the background.

        `args` as session/new checked them: workspace id and name trimmed, role upper case,
        mcpServers through the policy.
        """
        provider_id = args.provider_id(self.settings.default_provider)
        provider = get_provider(provider_id)
        if provider is None:
            raise BadRequest(f"Invalid provider: unknown provider {provider_id!r}")
        if args.custom_command and provider.id != "custom":
            raise BadRequest("Invalid customCommand: only with provider custom")
        provider_command(
            self.settings, provider, args.custom_command, args.custom_args or []
        )
        session_id = uuid.uuid4()
        session_key = str(session_id)
        if args.cwd is not None:
            cwd = await self.check_cwd(args.workspace_id, args.cwd)
        else:
            cwd = self.settings.cwd_root / safe_segment(args.workspace_id) / session_key

        parent = args.parent()
        if parent is not None:
            await self._check_parent(parent, args.workspace_id)
        if self.draining:
            raise AgentError("Gateway draining")
        await self.capacity.make_room()
        claimed_at = time.monotonic()
        role = args.role or "CRAFTER"
        new = sessions.NewSession(
            session_id=session_id,
            workspace_id=args.workspace_id,
            cwd=str(cwd),
            provider=provider.id,
            role=role,
            name=args.name,
            branch=args.branch,
            mode_id=args.mode_id,
            model=args.model,
            parent_session_id=parent,
            specialist_id=args.specialist_id,
            owner_instance_id=self.settings.instance_id,
            lease_ttl=self.settings.lease_ttl,
            auto_approve_permissions=bool(args.auto_approve_permissions),
            custom_command=args.custom_command,
            custom_args=args.custom_args,
            mcp_servers=list(args.mcp_servers or []),
            idempotency_key=args.idempotency_key,
        )
        # Row, event 1 and the row as read back: one statement, one round trip. Only an
        # idempotency key needs a transaction (its lock and lookup come first).
        first = session_events.StoredEvent(
            1, encode(session_key, 1, gateway_update("acp_status", status="connecting"))
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
                    raise SessionNotFound(str(parent)) from err
                raise UnknownWorkspace(args.workspace_id) from err
        # event 1, the list invalidation and session:created in one Redis round trip
        await session_changed_with_events(
            self.redis,
            self.channels,
            "session:created",
            session_key,
            args.workspace_id,
            row.session.wire(),
            [first],
        )
        live = self._register(row, row.lease_generation, claimed_at)
        live.acp_status, live.status = "connecting", "idle"
        _ = self.spawn(
            live.start(
                StartRequest(
                    resume=False, user_mode=args.mode_id, user_model=args.model
                )
            )
        )
        return {
            "sessionId": session_key,
            "provider": provider.id,
            "role": role,
            "acpStatus": "connecting",
            "ownerInstanceId": self.settings.instance_id,
        }

    async def _check_parent(self, parent: uuid.UUID, workspace_id: str) -> None:
        """-32004 as for an unknown id unless the parent is a session of the same workspace
        (so of the caller's scope too): no id reaches another workspace's session."""
        if await sessions.workspace_of(self.pool, parent) != workspace_id:
            raise SessionNotFound(str(parent))

    async def check_cwd(self, workspace_id: str, cwd: str) -> Path:
        """`cwd` resolved when inside the workspace's directory or one of its codebases."""
        repos = await workspaces.repo_paths(self.pool, workspace_id)
        return check_cwd(self.settings, workspace_id, cwd, repos)

    async def _idempotent_reply(
        self, conn: Connection, args: NewParams
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

    # --- resume -----------------------------------------------------------------------
    async def ensure_live(
        self, session_id: str, allowed: frozenset[str] | None = None
    ) -> tuple[LiveSession, ResumeMode]:
        """The live session, resuming it here first when its agent is not running."""
        live = self.live.get(session_id)
        if live is not None and not live.stopping:
            live.check_allowed(allowed)
            await live.wait_ready()
            return live, "attached"
        lock = self._resume_locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            live = self.live.get(session_id)
            if live is not None and not live.stopping:
                await live.wait_ready()
                return live, "attached"
            if live is not None:
                # let the old agent finish stopping so its lease release cannot race our claim
                await live.closed.wait()
            row = await self.get_session_or_404(session_id, allowed)
            if self.closed:
                raise AgentError("Gateway is shutting down")
            if self.draining:
                raise SessionUnservable("Gateway draining")
            await self.capacity.make_room()
            claimed_at = time.monotonic()
            claim = await sessions.claim_owner_from(
                self.pool,
                require_session_id(session_id),
                self.settings.instance_id,
                self.settings.lease_ttl,
            )
            if claim is None:
                fresh = await sessions.get(self.pool, require_session_id(session_id))
                owner = fresh.owner_instance_id if fresh else None
                raise SessionUnservable(
                    f"Session owned by {owner or 'another instance'}"
                )
            live = self._register(row, claim.generation, claimed_at)
            # what an earlier owner stored but did not index (it died before its pass)
            live.writer.request_index()
            live.acp_status = row.session.acp_status
            live.status = "closed"
            # prompts queued before the restart run once the agent is ready
            live.queue.extend(
                Queued(q.queued_prompt_id, q.blocks, q.text, q.meta, durable=True)
                for q in await queued_prompts.for_session(self.pool, live.uuid)
            )
            # The log, not the status, says whether a turn is open: an owner can die
            # between storing a turn's end and writing its status. Our claim fenced it,
            # so the log cannot change under this read.
            if await session_events.turn_open(self.pool, live.uuid):
                # The previous owner died mid-turn (or was told to stop quietly, which
                # left the row closed): end that turn in the log.
                cause = (
                    "the session was closed while it ran"
                    if claim.previous_status == "closed"
                    else "the gateway instance running it was lost"
                )
                live.emit("error", message=f"Turn interrupted: {cause}")
            await live.set_state(
                "connecting", "idle", gateway_update("acp_status", status="connecting")
            )
            _ = self.spawn(live.start(StartRequest(resume=True)))
            await live.wait_ready()
            return live, live.resume_mode

    async def load(
        self,
        session_id: str,
        allowed: frozenset[str] | None = None,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """session/load: the session live here, and how it came to be."""
        if cwd is not None:
            # checked by the session/new rule, then the stored cwd is used
            row = await self.get_session_or_404(session_id, allowed)
            await self.check_cwd(row.session.workspace_id, cwd)
        live, mode = await self.ensure_live(session_id, allowed)
        live.last_used = time.monotonic()
        return {
            "sessionId": session_id,
            "provider": live.provider,
            "role": live.role,
            "acpStatus": live.acp_status,
            "resumeMode": mode,
        }

    # --- queued prompts ---------------------------------------------------------------
    async def queue_loop(self) -> None:
        """Advance queues waiting for workspace room; take up queues nobody runs."""
        next_scan = 0.0
        while not self.closed:
            await asyncio.sleep(QUEUE_TICK)
            for live in list(self.live.values()):
                if live.queue and live.turn is None and not live.starting:
                    _ = self.spawn(live.run_next())
            now = time.monotonic()
            if now < next_scan or self.draining:
                continue
            next_scan = now + ORPHAN_QUEUE_TICK
            try:
                orphans = await queued_prompts.orphaned(self.pool, ORPHAN_BATCH)
            except PG_ERRORS as err:
                logger.warning("queued prompts not looked up: %s", err)
                continue
            for session_id in orphans:
                retry = self._orphan_retry.get(session_id)
                if session_id in self.live or (retry is not None and retry[0] > now):
                    continue
                _ = self.spawn(self._take_up(session_id))

    async def _take_up(self, session_id: str) -> None:
        """Resume a session whose queued prompts no live owner runs (they run at ready)."""
        try:
            await self.ensure_live(session_id)
        except (SessionUnservable, SessionNotFound):
            return  # another instance took it, or it is gone
        except (AgentError, *PG_ERRORS) as err:
            _, wait = self._orphan_retry.get(session_id, (0.0, ORPHAN_RETRY / 2))
            wait = min(wait * 2, ORPHAN_RETRY_MAX)
            self._orphan_retry[session_id] = (time.monotonic() + wait, wait)
            logger.warning("queued session %s not resumed: %s", session_id, err)
            return
        self._orphan_retry.pop(session_id, None)
        logger.info("took up the queued prompts of %s", session_id)

    async def drop_stored_prompt(self, session_key: str, queued_id: str) -> None:
        """Drop a queued prompt of a session not live here (its owner is gone)."""
        session_id = require_session_id(session_key)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await queued_prompts.delete(conn, session_id, uuid.UUID(queued_id)):
                return
            stored = await store(
                conn,
                session_id,
                *encode_batch(
                    [gateway_update("prompt_dropped", queuedPromptId=queued_id)]
                ),
            )
        await publish(self.redis, self.channels, session_key, stored)
        waiter = self.deps.waiters.get(queued_id)
        if waiter is not None and not waiter.done():
            waiter.set_result({"stopReason": "cancelled"})
