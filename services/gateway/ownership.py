"""Leases: renewal, the owner of a session, adoption, stale release, draining (§5.4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import asyncpg

from services.gateway.live import LiveSession
from shared.db import sessions

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

logger = logging.getLogger(__name__)


async def renew_loop(manager: SessionManager) -> None:
    interval = max(manager.settings.lease_ttl / 3, 0.05)
    while True:
        await asyncio.sleep(interval)
        lives = [lv for lv in manager.live.values() if not lv.stopping]
        if not lives:
            continue
        try:
            owned = await sessions.renew_leases_owned(
                manager.pool,
                manager.settings.instance_id,
                manager.settings.lease_ttl,
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
                manager.spawn(manager.stop(live, reason="lease lost", quiet=True))


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
    # Only the claim: the stored status stays as the dead owner left it, so
    # ensure_live (whose own claim then succeeds) still sees a turn it interrupted.
    previous = await sessions.claim_owner_from(
        manager.pool,
        uuid.UUID(sid),
        manager.settings.instance_id,
        manager.settings.lease_ttl,
        dead_owner,
    )
    return previous is not None


async def release_stale(manager: SessionManager) -> None:
    """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
    released = await sessions.release_instance(
        manager.pool, manager.settings.instance_id
    )
    for sid, workspace_id, acp_status in released:
        await manager.announce(
            workspace_id, sid, {"status": "closed", "acpStatus": acp_status}
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
