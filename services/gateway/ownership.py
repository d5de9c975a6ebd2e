"""Leases: renewal, the owner of a session, adoption, stale release, draining (§5.4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from services.gateway.live import (
    LiveSession,
    SessionDeps,
    check_allowed,
    session_uuid,
)
from shared.db import sessions

logger = logging.getLogger(__name__)


class Leases:
    """The leases of the sessions in the registry, and those of other instances."""

    def __init__(self, deps: SessionDeps, registry: dict[str, LiveSession]) -> None:
        self._deps = deps
        self._live = registry

    async def renew_loop(self) -> None:
        deps = self._deps
        interval = max(deps.settings.lease_ttl / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            lives = [lv for lv in self._live.values() if not lv.stopping]
            if not lives:
                continue
            try:
                owned = await sessions.renew_leases_owned(
                    deps.pool,
                    deps.settings.instance_id,
                    deps.settings.lease_ttl,
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
                    _ = deps.spawn(live.stop(reason="lease lost", quiet=True))

    async def remote_owner(
        self, sid: str, allowed: frozenset[str] | None = None
    ) -> str | None:
        """The other instance holding a live lease on `sid`, else None (unknown: None)."""
        session_id = sessions.parse_session_id(sid)
        session = (
            await sessions.get(self._deps.pool, session_id)
            if session_id is not None
            else None
        )
        if session is None:
            return None
        check_allowed(session.workspace_id, sid, allowed)
        owner = session.owner_instance_id
        return owner if owner and owner != self._deps.settings.instance_id else None

    async def adopt(self, sid: str, dead_owner: str) -> bool:
        """Compare-and-swap the lease from an owner found dead; True when it is ours now."""
        deps = self._deps
        if deps.draining or deps.closed:
            return False
        # Only the claim: the stored status stays as the dead owner left it, so
        # ensure_live (whose own claim then succeeds) still sees a turn it interrupted.
        previous = await sessions.claim_owner_from(
            deps.pool,
            session_uuid(sid),
            deps.settings.instance_id,
            deps.settings.lease_ttl,
            dead_owner,
        )
        return previous is not None

    async def release_stale(self) -> None:
        """At start: what the row says this INSTANCE_ID owns is left from a previous run."""
        deps = self._deps
        released = await sessions.release_instance(deps.pool, deps.settings.instance_id)
        for sid, workspace_id, acp_status in released:
            await deps.announce(
                workspace_id, sid, {"status": "closed", "acpStatus": acp_status}
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
