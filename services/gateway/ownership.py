"""Leases: renewal, the owner of a session, adoption, stale release, draining.

Renewal runs in a thread of its own (renewal.py says why), so a saturated event loop
cannot starve it; what it finds is applied here, on the main loop.

A lease has a generation, bumped by every claim and every forced release: the fencing
token. The owner stores events and state only at the generation it claimed, and checks it
before a side effect outside the log (a file write), so an instance that lost its lease
while paused writes nothing after its adopter. The sweeper closes sessions whose owner's
lease ran out, so an interrupted turn gets its end event without waiting for a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from services.gateway.live import (
    PG_ERRORS,
    LiveSession,
    SessionDeps,
    check_allowed,
    require_session_id,
)
from services.gateway.renewal import Held, LeaseRenewer
from shared.db import search, session_events, sessions
from shared.events import encode_batch, gateway_update, publish, store

logger = logging.getLogger(__name__)

# The sweeper looks this often at most (and every third of LEASE_TTL when shorter), so an
# interrupted turn ends within LEASE_TTL + this after its owner died.
SWEEP_MAX_INTERVAL = 1.0
SWEEP_BATCH = 100


class Leases:
    """The leases of the sessions in the registry, and those of other instances."""

    def __init__(self, deps: SessionDeps, registry: dict[str, LiveSession]) -> None:
        self._deps = deps
        self._live = registry
        # the running renewal thread's handle (set by renew_loop)
        self.renewer: LeaseRenewer | None = None

    async def renew_loop(self) -> None:
        """Own the renewal thread (renewal.py: why a thread): start it, beat its
        heartbeat until cancelled, then stop it (bounded). Cancelled by the manager's
        close, so app cleanup stops the thread."""
        deps = self._deps
        renewer = LeaseRenewer(
            database_url=deps.settings.database_url,
            instance_id=deps.settings.instance_id,
            ttl=deps.settings.lease_ttl,
            registry=self._live,
            loop=asyncio.get_running_loop(),
            apply=self._renewed,
        )
        self.renewer = renewer
        renewer.start()
        try:
            while True:
                renewer.beat()
                await asyncio.sleep(renewer.interval)
        finally:
            await renewer.stop()

    def _renewed(self, held: list[Held], owned: set[uuid.UUID], started: float) -> None:
        """On the main loop: what a renewal pass (in the thread) found."""
        ttl = self._deps.settings.lease_ttl
        for lease in held:
            live = lease.live
            if live.writer.generation != lease.generation:
                continue  # claimed again since the pass read it: not this pass's news
            if lease.session_id in owned:
                live.lease_until = max(live.lease_until, started + ttl)
            else:
                # Another instance took it (our lease ran out): two agents must not
                # write one session, so ours stops without touching the row.
                live.lease_lost()

    async def sweep_loop(self) -> None:
        """Close the sessions of owners whose lease ran out, without waiting for a call."""
        deps = self._deps
        interval = min(max(deps.settings.lease_ttl / 3, 0.05), SWEEP_MAX_INTERVAL)
        while not deps.closed:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except PG_ERRORS as err:
                logger.warning("lease sweep failed: %s", err)
            except Exception:  # the sweeper must outlive any one bad pass
                logger.exception("lease sweep failed")

    async def sweep(self) -> int:
        """One pass of the sweeper; returns how many sessions it closed."""
        me = self._deps.settings.instance_id
        closed = 0
        for lease in await sessions.expired_leases(self._deps.pool, SWEEP_BATCH):
            if lease.owner_instance_id == me and lease.session_id in self._live:
                continue  # running here: the renewal extends it
            reason = (
                f"the gateway instance running it ({lease.owner_instance_id}) was lost"
            )
            if await self.close_orphan(lease, reason=reason, expired_only=True):
                closed += 1
        return closed

    async def close_orphan(
        self, lease: sessions.HeldLease, *, reason: str, expired_only: bool
    ) -> bool:
        """Close a session its owner left, end its open turn: one transaction, one instance.

        The compare-and-set on (owner, generation) lets exactly one instance do it; the new
        generation fences the old owner, so its turn ends once (here) even if it comes back.
        """
        deps = self._deps
        session_id = uuid.UUID(lease.session_id)
        async with deps.pool.acquire() as conn, conn.transaction():
            closed = await sessions.close_orphan(conn, lease, expired_only=expired_only)
            if closed is None:
                return False  # renewed, claimed or closed by someone else meanwhile
            updates = []
            if await session_events.turn_open(conn, session_id):
                updates.append(
                    gateway_update("error", message=f"Turn interrupted: {reason}")
                )
            if closed.acp_status != closed.previous_acp_status:
                updates.append(gateway_update("acp_status", status=closed.acp_status))
            stored = await store(
                conn, session_id, *encode_batch(updates), generation=closed.generation
            )
        logger.warning(
            "closed session %s: %s (%d events written)",
            lease.session_id,
            reason,
            len(stored),
        )
        # the dead owner may not have indexed its last events; ours end its open message
        try:
            await search.index_session(deps.pool, session_id)
        except PG_ERRORS as err:
            logger.warning("search index pass of %s failed: %s", session_id, err)
        await publish(deps.redis, deps.channels, lease.session_id, stored)
        await deps.announce(
            closed.workspace_id,
            lease.session_id,
            {"status": "closed", "acpStatus": closed.acp_status},
        )
        return True

    async def remote_owner(
        self, session_key: str, allowed: frozenset[str] | None = None
    ) -> str | None:
        """The other instance holding a live lease on the session, else None (unknown: None)."""
        session_id = sessions.parse_session_id(session_key)
        session = (
            await sessions.get(self._deps.pool, session_id)
            if session_id is not None
            else None
        )
        if session is None:
            return None
        check_allowed(session.workspace_id, session_key, allowed)
        owner = session.owner_instance_id
        return owner if owner and owner != self._deps.settings.instance_id else None

    async def adopt(self, session_id: str, dead_owner: str) -> bool:
        """Compare-and-swap the lease from an owner found dead; True when it is ours now."""
        deps = self._deps
        if deps.draining or deps.closed:
            return False
        # Only the claim (a new generation fences the dead owner): ensure_live, whose own
        # claim then succeeds, ends the turn it interrupted.
        claim = await sessions.claim_owner_from(
            deps.pool,
            require_session_id(session_id),
            deps.settings.instance_id,
            deps.settings.lease_ttl,
            dead_owner,
        )
        return claim is not None

    async def release_stale(self) -> None:
        """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
        deps = self._deps
        for lease in await sessions.owned_by(deps.pool, deps.settings.instance_id):
            await self.close_orphan(
                lease,
                reason="the gateway instance running it restarted",
                expired_only=False,
            )

    async def drain(self, grace: float) -> None:
        """SIGTERM: refuse new work, let running turns finish (up to `grace`), stop agents.

        Stopping writes status closed and releases each lease, so the sessions are
        resumable at once on any other instance.
        """
        self._deps.draining = True

        def running(lv: LiveSession) -> bool:
            return lv.turn is not None and not lv.turn.done

        idle = [lv for lv in self._live.values() if not running(lv)]
        await asyncio.gather(
            *(lv.stop(reason="shutdown") for lv in idle), return_exceptions=True
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while True:
                    turns = [
                        lv.turn.future
                        for lv in self._live.values()
                        if lv.turn is not None and running(lv)
                    ]
                    if not turns:
                        break
                    await asyncio.wait(turns, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(
            *(lv.stop(reason="shutdown") for lv in list(self._live.values())),
            return_exceptions=True,
        )
