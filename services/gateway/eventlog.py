"""Per-session batched event writer: store in Postgres in order, then publish to Redis.

One writer per live session. Callers `append` session/update params (never blocking) and
`await flush()` when they must know their event is stored (session/new, turn_complete).
A single flush task takes everything queued, appends it in ONE statement (counter bump
and insert, contiguous ids from the session row counter), then publishes it; while a flush runs the next batch
accumulates, so a burst of chunks costs a few transactions, and an idle writer flushes at
once (no timer delay).

Search indexing runs outside the append transaction, in a pass task beside the flush
task (shared.db.search.index_session, its own connection): started when a store leaves
nothing queued and what was stored can make a document searchable (a prompt, or another
kind after message chunks: the end of a message), or when a long message has piled up
INDEX_BACKLOG chunks. So a flood is not indexed per batch, an idle writer indexes within
milliseconds, and `indexed()` lets the turn's reply wait until its prompt and messages are
searchable (the turn's end event closes its last message).

Every store moves `sessions.last_activity`, which cached session lists show: after a store
the writer invalidates its workspace's lists at most once per ACTIVITY_INTERVAL. Not while
the last state it stored says a turn runs (status `active`): the query service caches a
list whose scope has a running turn for at most a second (ACTIVE_LIST_TTL), the turn's start
is announced with an invalidation, and the store that ends the turn invalidates again, so
the lists' lastActivity lags by at most about a second either way, without the per-second
invalidations that would make every query process drop its lists of the workspace.

Each append carries the session's lease generation (the fencing token of its owner): once
another instance has taken the session over, nothing more is stored and `on_fenced` tells
the owner to stop its agent.

Events are encoded when appended, so what waits holds bytes, counted in one EventBuffer
per process (EVENT_BUFFER_BYTES). While it is full the agents' stdout readers stop
reading (agents.py), so a Postgres outage makes agents wait instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from shared import events as event_bytes
from shared.cache import try_invalidate_sessions
from shared.channels import Channels
from shared.db import search, session_events
from shared.db.connect import Pool
from shared.errors import SessionNotFound
from shared.redisconn import Redis
from shared.retry import Backoff

logger = logging.getLogger(__name__)

# lastActivity in the cached list may lag by up to this much (outside a turn; during one the
# query service's ACTIVE_LIST_TTL bounds it)
ACTIVITY_INTERVAL = 1.0
# what a queued event costs beyond its encoded bytes (the bytes and str objects, list slots)
ENTRY_OVERHEAD = 128
RETRY_BASE = 0.05
RETRY_CAP = 2.0
# Message chunks stored but not indexed after which a long message is indexed while it
# goes on (a pass beside the stores), so that its end is not one long pass that the turn's
# reply waits for: a 50,000-chunk flood takes about ten passes.
INDEX_BACKLOG = 5000
# Postgres errors worth retrying: the server or the connection, not the statement
_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


class EventBuffer:
    """Bytes of events appended but not yet stored, across every writer of a process.

    Appending never blocks (the gateway's own events, a turn's end, must not wait), so
    the bound is kept by the readers: before each stdout line an agent reader waits for
    room, and beyond the limit the agents wait on their pipes until stores free it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.readers_waiting = 0
        self._room = asyncio.Event()
        self._room.set()
        # when a store of any writer of the process last succeeded (monotonic): a
        # writer that waits its turn while others store sees a busy Postgres, not a
        # down one (EventWriter.flush_unless_down)
        self.stored_at = 0.0

    def full(self) -> bool:
        return self.used >= self.limit

    def take(self, size: int) -> None:
        self.used += size
        if self.used >= self.limit:
            self._room.clear()

    def give(self, size: int) -> None:
        self.used -= size
        if self.used < self.limit:
            self._room.set()

    async def wait_room(self) -> None:
        """Return once the buffer is below its limit."""
        if self.used < self.limit:
            return
        self.readers_waiting += 1
        try:
            while self.used >= self.limit:
                await self._room.wait()
        finally:
            self.readers_waiting -= 1


class EventWriter:
    """Ordered, batched, never-dropping writer of one session's events."""

    def __init__(
        self,
        pool: Pool,
        redis: Redis,
        channels: Channels,
        session_id: uuid.UUID,
        *,
        workspace_id: str,
        on_batch: Callable[[int, float], None] | None = None,
        generation: int | None = None,
        buffer: EventBuffer | None = None,
    ) -> None:
        self._on_batch = on_batch
        # the lease generation this instance holds (None: unfenced); set on every claim
        self.generation = generation
        self.on_fenced: Callable[[], None] | None = None
        self._fenced = False
        self._buffer = buffer if buffer is not None else EventBuffer(sys.maxsize)
        self._held = 0  # bytes of ours counted in the buffer
        # set when the flush task ends: nothing appended after it is stored or counted
        self._finished = False
        self._pool = pool
        self._redis = redis
        self._channels = channels
        self._session_id = session_id
        # lastActivity moves the lists of this workspace (and the unscoped ones) only
        self._workspace_id = workspace_id
        # queued events, encoded: kinds and shared.events.encode_rest bytes
        self._kinds: list[str] = []
        self._rests: list[bytes] = []
        self._queued_bytes = 0
        self._state: session_events.State | None = None
        self._appended = 0  # events handed to append() so far
        self._stored = 0  # events stored (or abandoned because the session is gone)
        self._handled = 0  # like _stored, counted when the store ends (before publish)
        # events indexed as far as they can be: a pass covered them, or none was needed
        self._indexed = 0
        # a pass is due: a prompt stored since the last pass began, a message that may be
        # open followed by another kind, or a claim (an earlier owner's tail)
        self._index_due = False
        self._index_open = False  # the last pass left an agent message open
        self._chunks_stored = False  # message chunks stored since the last pass began
        self._backlog = 0  # how many chunks (a long message is indexed as it goes)
        self._index_retry_at = 0.0
        self._index_backoff = Backoff(RETRY_BASE, RETRY_CAP)
        self._pass: asyncio.Task[None] | None = None  # the running pass, at most one
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self._closing = False
        self._gone = False
        self._last_invalidate = 0.0
        self._activity_dirty = False  # stored since the last activity invalidation
        # the status of the last state this writer stored (None: none yet, e.g. a claimed
        # session's writer): while it is `active` the activity invalidation waits
        self._stored_status: str | None = None
        # publishes run behind the next store, chained so they stay in order
        self._last_publish: asyncio.Task[None] | None = None
        self._publishes: set[asyncio.Task[None]] = set()
        self._task = asyncio.create_task(self._run(), name=f"eventlog:{session_id}")

    @property
    def session_id(self) -> uuid.UUID:
        return self._session_id

    @property
    def fenced(self) -> bool:
        """True once a store found our lease generation stale: nothing more is stored."""
        return self._fenced

    def append(
        self, params: dict[str, Any], state: session_events.State | None = None
    ) -> int:
        """Queue one session/update params object; returns its position for `flush(upto)`.

        With a `state`, the session row takes it in the statement that stores this event
        (a status change and its event are one write).
        """
        if self._gone or self._fenced or self._finished:
            return self._appended
        if state is not None:
            self._state = state  # a batch writes the last state queued in it
        rest = event_bytes.encode_rest(params)
        size = len(rest) + ENTRY_OVERHEAD
        self._kinds.append(sys.intern(event_bytes.kind_of(params)))
        self._rests.append(rest)
        self._queued_bytes += size
        self._held += size
        self._buffer.take(size)
        self._appended += 1
        self._wakeup.set()
        return self._appended

    def _release(self, size: int) -> None:
        """Give `size` of our bytes back to the process buffer (never more than we hold)."""
        size = min(size, self._held)
        self._held -= size
        self._buffer.give(size)

    async def flush(self, upto: int | None = None) -> None:
        """Wait until every event appended so far (or up to `upto`) is stored and published."""
        target = self._appended if upto is None else upto
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._stored >= target or self._task.done()
            )

    async def flush_unless_down(
        self, down_after: float, upto: int | None = None
    ) -> None:
        """`flush(upto)`, or TimeoutError once no store of the whole process has succeeded
        for `down_after` seconds of our wait.

        A fixed time-out would call Postgres down when it is only busy: with a thousand
        sessions streaming at once, a store can wait longer than that for a pooled
        connection while the other writers' stores go through.
        """
        target = self._appended if upto is None else upto
        started = time.monotonic()
        async with self._progress:
            while not (self._stored >= target or self._task.done()):
                alive = max(started, self._buffer.stored_at)
                remaining = alive + down_after - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._progress.wait()

    async def indexed(self) -> None:
        """Wait until every event appended so far is stored, published and searchable."""
        target = self._appended
        await self.flush(target)
        async with self._progress:
            self._wakeup.set()
            await self._progress.wait_for(
                lambda: self._indexed >= target or self._task.done()
            )

    def request_index(self) -> None:
        """Run a pass once idle even if nothing we store needs one (a claimed session)."""
        self._index_due = True
        self._wakeup.set()  # the flush task starts it

    async def close(self, *, timeout: float = 5.0) -> None:
        """Store and index what is queued (bounded wait), then stop the flush task."""
        self._closing = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
                await self.indexed()
        except TimeoutError:
            logger.warning(
                "event writer for %s closed with %d events unstored, %d not indexed",
                self._session_id,
                self._appended - self._stored,
                self._appended - self._indexed,
            )
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._pass is not None:
            self._pass.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pass
        for task in list(self._publishes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._activity_due():
            await try_invalidate_sessions(
                self._redis, self._channels, self._workspace_id
            )

    def _activity_due(self) -> bool:
        """Stored since the last activity invalidation, and no turn runs.

        While the stored status is `active`, lists showing this session are cached for at
        most ACTIVE_LIST_TTL (the query service sees the running turn), and those cached
        before the turn were dropped by its start's announcement: an invalidation would add
        nothing. After the store that leaves `active` (turn end, error, close) it is due
        again: its caller's announcement may not come (a prompt that failed to start).
        """
        return self._activity_dirty and self._stored_status != "active"

    async def _run(self) -> None:
        try:
            while True:
                self._maybe_index()
                if not self._rests:
                    self._wakeup.clear()
                    wait_for: float | None = None
                    if self._activity_due():
                        wait_for = max(
                            0.0,
                            self._last_invalidate
                            + ACTIVITY_INTERVAL
                            - time.monotonic(),
                        )
                    if self._index_due and self._pass is None:
                        retry = max(0.0, self._index_retry_at - time.monotonic())
                        wait_for = retry if wait_for is None else min(wait_for, retry)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_for):
                            await self._wakeup.wait()
                if self._rests:
                    kinds, rests, size = self._kinds, self._rests, self._queued_bytes
                    state, self._state = self._state, None
                    self._kinds, self._rests, self._queued_bytes = [], [], 0
                    events = await self._store(kinds, rests, state)
                    if state is not None and events:
                        self._stored_status = state.status
                    self._stored_batch(kinds, bool(events))
                    # The next batch is stored while this one is published.
                    task = asyncio.create_task(
                        self._publish(self._last_publish, events, len(rests), size)
                    )
                    self._publishes.add(task)
                    task.add_done_callback(self._publishes.discard)
                    self._last_publish = task
                    self._activity_dirty = True
                if (
                    self._activity_due()
                    and time.monotonic() - self._last_invalidate >= ACTIVITY_INTERVAL
                ):
                    self._activity_dirty = False
                    self._last_invalidate = time.monotonic()
                    await try_invalidate_sessions(
                        self._redis, self._channels, self._workspace_id
                    )
        finally:
            # nothing more is stored: what we hold must not keep agents waiting (set
            # before any await, so no append can take room that is never given back)
            self._finished = True
            self._release(self._held)
            async with self._progress:
                self._progress.notify_all()

    def _stored_batch(self, kinds: list[str], stored: bool) -> None:
        """Count a batch handled; note whether it needs an index pass.

        Chunks alone need none: a message is searchable once it ends, and it ends with
        another kind (a turn always ends with turn_complete or error). A chunk with a new
        messageId ends the previous message too: that one is found after the next pass.
        """
        self._handled += len(kinds)
        if self._gone or self._fenced:
            self._index_due = False  # nothing more here: the next owner's claim indexes
        elif stored:
            chunks = kinds.count("agent_message_chunk")
            if chunks:
                self._chunks_stored = True
                self._backlog += chunks
            if "user_message" in kinds or (
                chunks < len(kinds) and (self._chunks_stored or self._index_open)
            ):
                self._index_due = True
        if not self._index_due and self._pass is None:
            # nothing to index (waiters re-check when the batch is published)
            self._indexed = self._handled

    def _maybe_index(self) -> None:
        """Start a pass when one is due and nothing is queued (an idle writer), or when a
        long message has INDEX_BACKLOG chunks unindexed; never two at once."""
        if self._pass is not None:
            return
        if self._gone or self._fenced:
            # a pass that failed before: the session's next owner (or nobody) indexes
            self._index_due = False
            self._indexed = self._handled
            return
        if time.monotonic() < self._index_retry_at:
            return
        idle_due = self._index_due and not self._rests
        if not idle_due and self._backlog < INDEX_BACKLOG:
            return
        self._pass = asyncio.create_task(
            self._index(), name=f"search-index:{self._session_id}"
        )

    async def _index(self) -> None:
        """One index pass over what is stored; on failure, retried later (backoff).

        It runs beside the flush task (its own connection), so stores go on meanwhile.
        """
        covers, chunks_stored = self._handled, self._chunks_stored
        # batches stored from now on set these again
        self._index_due, self._chunks_stored, self._backlog = False, False, 0
        try:
            async with self._pool.acquire() as conn:
                is_open = await search.index_session(conn, self._session_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            self._index_due = True
            self._chunks_stored = self._chunks_stored or chunks_stored
            delay = self._index_backoff.delay()
            self._index_retry_at = time.monotonic() + delay
            logger.warning(
                "search index pass of %s failed (%s); retrying in %.2fs",
                self._session_id,
                err,
                delay,
            )
            return
        finally:
            self._pass = None
            self._wakeup.set()  # the flush task starts the next pass if one is due
        self._index_backoff.reset()
        self._index_retry_at = 0.0
        self._index_open = is_open
        if is_open and self._handled > covers:
            self._index_due = True  # stored meanwhile after a message left open
        self._indexed = max(self._indexed, covers)
        if not self._index_due:
            self._indexed = self._handled
        async with self._progress:
            self._progress.notify_all()

    async def _publish(
        self,
        previous: asyncio.Task[None] | None,
        events: list[session_events.StoredEvent],
        count: int,
        size: int,
    ) -> None:
        """Publish after the previous batch's publish (order), then count the batch done."""
        if previous is not None and not previous.done():
            await asyncio.wait({previous})  # its failure is its own: never raises here
        if events:
            await event_bytes.publish(
                self._redis, self._channels, str(self._session_id), events
            )
        self._release(size)
        async with self._progress:
            self._stored += count
            self._progress.notify_all()

    async def _store(
        self,
        kinds: list[str],
        rests: list[bytes],
        state: session_events.State | None,
    ) -> list[session_events.StoredEvent]:
        """One statement for the batch; retry with backoff on Postgres failure, in order.

        Returns the stored events ([] when they could not be stored and were given up).
        Every attempt carries the same batch id: when an attempt committed but its reply
        was lost, the retry finds the batch stored and does not store it again.
        """
        batch_id = uuid.uuid4()
        backoff = Backoff(RETRY_BASE, RETRY_CAP)
        events: list[session_events.StoredEvent] = []
        while True:
            if self._fenced:
                return []
            try:
                started = time.perf_counter()
                async with self._pool.acquire() as conn:
                    events = await event_bytes.store(
                        conn,
                        self._session_id,
                        kinds,
                        rests,
                        batch_id=batch_id,
                        state=state,
                        generation=self.generation,
                    )
                self._buffer.stored_at = time.monotonic()
                if self._on_batch is not None:
                    self._on_batch(len(rests), time.perf_counter() - started)
                break
            except SessionNotFound:
                # deleted meanwhile: nothing can be stored for it any more
                self._gone = True
                return []
            except session_events.LeaseLost:
                self._lease_lost(len(rests))
                return []
            except asyncpg.PostgresError as err:
                if not isinstance(err, _TRANSIENT):
                    # a statement that can never succeed: retrying would block the log
                    logger.error(
                        "dropping %d events of %s: %s",
                        len(rests),
                        self._session_id,
                        err,
                    )
                    return []
                await self._backoff(err, backoff.delay(), len(rests))
                if self._closing and backoff.at_cap:
                    return []
            except (OSError, asyncpg.InterfaceError) as err:
                if self._closing and backoff.at_cap:
                    logger.error(
                        "dropping %d events of %s after retries: %s",
                        len(rests),
                        self._session_id,
                        err,
                    )
                    return []
                delay = backoff.delay()
                logger.warning(
                    "event store failed for %s (%s); retrying in %.2fs",
                    self._session_id,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
        return events

    def _lease_lost(self, count: int) -> None:
        """Another instance owns the session now: drop, never write after its events."""
        self._fenced = True
        logger.warning(
            "lease generation %s of %s is stale; %d events not stored",
            self.generation,
            self._session_id,
            count,
        )
        if self.on_fenced is not None:
            self.on_fenced()

    async def _backoff(self, err: BaseException, delay: float, count: int) -> None:
        logger.warning(
            "storing %d events of %s failed (%s); retrying in %.2fs",
            count,
            self._session_id,
            err,
            delay,
        )
        await asyncio.sleep(delay)
