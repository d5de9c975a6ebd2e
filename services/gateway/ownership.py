"""Leases: renewal, the owner of a session, adoption, stale release, draining (§5.4).

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
import time
import uuid
from typing import TYPE_CHECKING

import asyncpg

from services.gateway.live import LiveSession
from shared.db import session_events, sessions
from shared.events import gateway_update, publish_events

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

logger = logging.getLogger(__name__)

# The sweeper looks this often at most (and every third of LEASE_TTL when shorter), so an
# interrupted turn ends within LEASE_TTL + this after its owner died.
SWEEP_MAX_INTERVAL = 1.0
SWEEP_BATCH = 100
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def renew_loop(manager: SessionManager) -> None:
    ttl = manager.settings.lease_ttl
    interval = max(ttl / 3, 0.05)
    while True:
        await asyncio.sleep(interval)
        lives = [
            lv
            for lv in manager.live.values()
            if not lv.stopping and lv.writer.generation is not None
        ]
        if not lives:
            continue
        started = time.monotonic()
        try:
            owned = await sessions.renew_leases_owned(
                manager.pool,
                manager.settings.instance_id,
                ttl,
                [(lv.uuid, lv.writer.generation or 0) for lv in lives],
            )
        except _PG_ERRORS as err:
            logger.warning("lease renewal failed: %s", err)
            continue
        for live in lives:
            if live.uuid in owned:
                live.lease_until = started + ttl
            else:
                # Another instance took it (our lease ran out): two agents must not
                # write one session, so ours stops without touching the row.
                manager.lease_lost(live)


async def holds_lease(manager: SessionManager, live: LiveSession) -> bool:
    """Before a side effect outside the log (a file write): is our generation current?

    Without Postgres, our own clock decides: the lease cannot have been taken before
    it ran out.
    """
    generation = live.writer.generation
    if live.writer.fenced:
        return False
    if generation is None:
        return True
    try:
        current = await sessions.holds_generation(manager.pool, live.uuid, generation)
    except _PG_ERRORS as err:
        logger.warning("lease check of %s failed: %s", live.session_id, err)
        return time.monotonic() < live.lease_until
    if not current:
        manager.lease_lost(live)
    return current


async def sweep_loop(manager: SessionManager) -> None:
    """Close the sessions of owners whose lease ran out, without waiting for a call."""
    interval = min(max(manager.settings.lease_ttl / 3, 0.05), SWEEP_MAX_INTERVAL)
    while not manager.closed:
        await asyncio.sleep(interval)
        try:
            await sweep(manager)
        except _PG_ERRORS as err:
            logger.warning("lease sweep failed: %s", err)
        except Exception:  # the sweeper must outlive any one bad pass
            logger.exception("lease sweep failed")


async def sweep(manager: SessionManager) -> int:
    """One pass of the sweeper; returns how many sessions it closed."""
    me = manager.settings.instance_id
    closed = 0
    for lease in await sessions.expired_leases(manager.pool, SWEEP_BATCH):
        if lease.owner_instance_id == me and lease.session_id in manager.live:
            continue  # running here: the renewal extends it
        reason = f"the gateway instance running it ({lease.owner_instance_id}) was lost"
        if await close_orphan(manager, lease, reason=reason, expired_only=True):
            closed += 1
    return closed


async def close_orphan(
    manager: SessionManager,
    lease: sessions.HeldLease,
    *,
    reason: str,
    expired_only: bool,
) -> bool:
    """Close a session its owner left, end its open turn: one transaction, one instance.

    The compare-and-set on (owner, generation) lets exactly one instance do it; the new
    generation fences the old owner, so its turn ends once (here) even if it comes back.
    """
    sid = uuid.UUID(lease.session_id)
    async with manager.pool.acquire() as conn, conn.transaction():
        closed = await sessions.close_orphan(conn, lease, expired_only=expired_only)
        if closed is None:
            return False  # renewed, claimed or closed by someone else meanwhile
        updates = []
        if await session_events.turn_open(conn, sid):
            updates.append(
                gateway_update("error", message=f"Turn interrupted: {reason}")
            )
        if closed.acp_status != closed.previous_acp_status:
            updates.append(gateway_update("acp_status", status=closed.acp_status))
        stored = await session_events.append_batch(
            conn, sid, updates, generation=closed.generation
        )
    logger.warning(
        "closed session %s: %s (%d events written)",
        lease.session_id,
        reason,
        len(stored),
    )
    await publish_events(manager.redis, manager.channels, lease.session_id, stored)
    await manager.announce(
        closed.workspace_id,
        lease.session_id,
        {"status": "closed", "acpStatus": closed.acp_status},
    )
    return True


async def remote_owner(
    manager: SessionManager, sid: str, allowed: frozenset[str] | None = None
) -> str | None:
    """The other instance holding a live lease on `sid`, else None (unknown: None)."""
    session = await sessions.get(manager.pool, sid)
    if session is None:
        return None
    manager.check_allowed(session.workspace_id, sid, allowed)
    owner = session.owner_instance_id
    return owner if owner and owner != manager.settings.instance_id else None


async def adopt(manager: SessionManager, sid: str, dead_owner: str) -> bool:
    """Compare-and-swap the lease from an owner found dead; True when it is ours now."""
    if manager.draining or manager.closed:
        return False
    # Only the claim (a new generation fences the dead owner): ensure_live, whose own
    # claim then succeeds, ends the turn it interrupted.
    claim = await sessions.claim_owner_from(
        manager.pool,
        uuid.UUID(sid),
        manager.settings.instance_id,
        manager.settings.lease_ttl,
        dead_owner,
    )
    return claim is not None


async def release_stale(manager: SessionManager) -> None:
    """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
    for lease in await sessions.owned_by(manager.pool, manager.settings.instance_id):
        await close_orphan(
            manager,
            lease,
            reason="the gateway instance running it restarted",
            expired_only=False,
        )


async def drain(manager: SessionManager, grace: float) -> None:
    """SIGTERM: refuse new work, let running turns finish (up to `grace`), stop agents.

    Stopping writes status closed and releases each lease, so the sessions are
    resumable at once on any other instance.
    """
    manager.draining = True

    def running(lv: LiveSession) -> bool:
        return lv.turn is not None and not lv.turn.done

    idle = [lv for lv in manager.live.values() if not running(lv)]
    await asyncio.gather(
        *(manager.stop(lv, reason="shutdown") for lv in idle), return_exceptions=True
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            while True:
                turns = [
                    lv.turn.future
                    for lv in manager.live.values()
                    if lv.turn is not None and running(lv)
                ]
                if not turns:
                    break
                await asyncio.wait(turns, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(
        *(manager.stop(lv, reason="shutdown") for lv in list(manager.live.values())),
        return_exceptions=True,
    )
