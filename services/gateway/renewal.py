"""Lease renewal off the event loop: a thread with its own loop and its own connection.

Why a thread. The lease says "this instance is alive and runs the session"; it must keep
saying so while the instance is merely busy. On the gateway's event loop the renewal
competes with everything else the loop does: with thousands of SSE streams on a saturated
core a loop iteration can take seconds, a renewal needs several iterations (pool,
send, reply, wake-up), and a lease of 15 s ran out while the owner was healthy; an idle
second gateway then took the session over. asyncio has no priorities, and a longer
LEASE_TTL only delays failover after a real crash. So the renewal runs where the main
loop's load cannot reach it:

- its own thread and event loop, with its own asyncpg connection (not the pool's, whose
  connections belong to the main loop). The GIL is released during socket I/O and
  sleeps, and CPython hands it over every switch interval (5 ms) even to a CPU-bound main
  thread, so the renewal runs every LEASE_TTL/3 whatever the main loop does;
- the thread only reads: the registry is copied in one C-level call under the GIL (a
  concurrent change raises RuntimeError: that pass is skipped), and of each session only
  values that never change or are swapped whole (its UUID, `stopping`, the writer's
  generation). What a renewal found is applied on the main loop
  (`loop.call_soon_threadsafe`): `lease_until` extended, or `lease_lost()` for a session
  another instance took, so LiveSession is only ever mutated by its own loop;
- fencing is unchanged: the UPDATE renews only at the generation we claimed, and every
  store and side effect checks the generation, so an owner that lost its lease writes
  nothing even if it learns late;
- a watchdog keeps the lease honest: the main loop beats a heartbeat every LEASE_TTL/3,
  and the thread stops renewing when it has not beaten for `stall_limit` seconds (far
  beyond any load, default the larger of 60 s and 4 LEASE_TTL). A loop that is wedged (not busy:
  stuck) then loses its sessions to a healthy instance, as it did before.

A separate process would isolate more but needs the registry over IPC and a second
process to supervise; the thread needs neither. The owner of the thread is the task
running `Leases.renew_loop` (the session manager's "lease-renewal" loop): it starts the
thread, beats the heartbeat, and on cancellation (the manager's close, on app cleanup)
stops the thread and waits for it, bounded by `STOP_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import asyncpg

from services.gateway.live import PG_ERRORS, LiveSession
from shared.db import sessions

logger = logging.getLogger(__name__)

# The longest the owner waits for the thread on shutdown (a renewal in flight is
# cancelled, the connection closed or dropped): far below the manager's 10 s for its tasks.
STOP_TIMEOUT = 3.0
# How long the connection may take to close cleanly before it is dropped.
CLOSE_TIMEOUT = 1.0


def default_stall_limit(ttl: float) -> float:
    """Seconds without a main-loop heartbeat after which renewal stops (a wedged loop)."""
    return max(4 * ttl, 60.0)


@dataclass(frozen=True, slots=True)
class Held:
    """One lease as the thread saw it: the session object, its id, our generation."""

    live: LiveSession
    session_id: uuid.UUID
    generation: int


# Called on the main loop: the leases renewed, the ids still ours, when the pass started.
Apply = Callable[[list[Held], set[uuid.UUID], float], None]


class LeaseRenewer:
    """Renews the registry's leases every `interval` from a thread of its own."""

    def __init__(
        self,
        *,
        database_url: str,
        instance_id: str,
        ttl: float,
        registry: Mapping[str, LiveSession],
        loop: asyncio.AbstractEventLoop,
        apply: Apply,
        stall_limit: float | None = None,
    ) -> None:
        self._database_url = database_url
        self._instance_id = instance_id
        self._ttl = ttl
        self.interval = max(ttl / 3, 0.05)
        self._live = registry
        self._main_loop = loop
        self._apply = apply
        # public so a test can shorten it; read by the thread on each pass
        self.stall_limit = (
            default_stall_limit(ttl) if stall_limit is None else stall_limit
        )
        self._beat = time.monotonic()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._stalled = False
        self._thread = threading.Thread(
            target=self._run, name=f"lease-renewal-{instance_id}", daemon=True
        )

    # --- the main loop's side ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        """The main loop is alive (a float swapped whole: safe to read from the thread)."""
        self._beat = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the thread and wait for it, at most `timeout` (it is a daemon after that)."""
        with self._lock:
            self._stop_requested = True
            loop, wake = self._thread_loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(wake.set)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            logger.error("lease renewal thread did not stop within %.1f s", timeout)

    # --- the thread's side ------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # said loudly: without this thread every lease lapses
            logger.exception("lease renewal thread died")

    async def _main(self) -> None:
        wake = asyncio.Event()
        with self._lock:
            if self._stop_requested:
                return
            self._thread_loop, self._wake = asyncio.get_running_loop(), wake
        work = asyncio.create_task(self._renew_forever())
        try:
            await wake.wait()
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            await self._disconnect()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew_once()
            except PG_ERRORS as err:
                logger.warning("lease renewal failed: %s", err)
                await self._disconnect()
            except TimeoutError:
                logger.warning("lease renewal timed out")
                await self._disconnect()
            except Exception:  # the renewal must outlive any one bad pass
                logger.exception("lease renewal failed")
                await self._disconnect()

    async def renew_once(self) -> None:
        """One pass (in the thread): renew what the registry holds, report to the main loop."""
        stalled_for = time.monotonic() - self._beat
        if stalled_for > self.stall_limit:
            if not self._stalled:
                logger.error(
                    "event loop silent for %.0f s: lease renewal paused, other"
                    " instances may take this instance's sessions over",
                    stalled_for,
                )
            self._stalled = True
            return
        if self._stalled:
            logger.warning("event loop alive again: lease renewal resumed")
            self._stalled = False
        held = self._snapshot()
        if not held:
            return
        started = time.monotonic()
        conn = await self._connect()
        owned = await sessions.renew_leases_owned(
            conn,
            self._instance_id,
            self._ttl,
            [(h.session_id, h.generation) for h in held],
        )
        with contextlib.suppress(RuntimeError):  # the main loop closed meanwhile
            self._main_loop.call_soon_threadsafe(self._apply, held, owned, started)

    def _snapshot(self) -> list[Held]:
        """The live sessions with a claimed generation, read without mutating anything."""
        try:
            # one C-level copy under the GIL; should the main thread still change the
            # dict meanwhile, the copy raises and this pass is skipped
            lives = tuple(self._live.values())
        except RuntimeError:
            return []
        held = []
        for live in lives:
            generation = live.writer.generation
            if not live.stopping and generation is not None:
                held.append(Held(live, live.uuid, generation))
        return held

    async def _connect(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._conn is None or self._conn.is_closed():
            # a renewal slower than the lease is pointless: the lease bounds both waits
            self._conn = await asyncpg.connect(
                self._database_url, timeout=self._ttl, command_timeout=self._ttl
            )
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
        except (*PG_ERRORS, TimeoutError):
            conn.terminate()
