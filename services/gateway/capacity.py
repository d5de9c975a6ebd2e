"""How many agents run here: room at MAX_SESSIONS, idle agents stopped."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from shared.errors import AgentError

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager


async def make_room(manager: SessionManager) -> None:
    """At MAX_SESSIONS stop the least recently used idle agent, else -32000."""
    active = [lv for lv in manager.live.values() if not lv.stopping]
    if len(active) < manager.settings.max_sessions:
        return
    idle = [
        lv
        for lv in active
        if lv.turn is None and lv.ready.done() and not lv.permissions
    ]
    if not idle:
        raise AgentError("Gateway at capacity")
    victim = min(idle, key=lambda lv: lv.last_used)
    await manager.stop(victim, reason="capacity")


async def idle_loop(manager: SessionManager) -> None:
    timeout = manager.settings.agent_idle_timeout
    interval = min(max(timeout / 4, 0.05), 5.0)
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        for live in list(manager.live.values()):
            if manager.has_subscribers(live.session_id):
                live.last_used = now
            if (
                not live.stopping
                and live.ready.done()
                and live.turn is None
                and not live.permissions
                and now - live.last_used >= timeout
            ):
                manager.spawn(manager.stop(live, reason="idle"))
