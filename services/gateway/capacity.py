"""How many agents run here: room at MAX_SESSIONS, idle agents stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.gateway.live import LiveSession, SessionDeps
from shared.errors import AgentError


class Capacity:
    """Makes room among the live sessions of the registry and stops idle agents."""

    def __init__(self, deps: SessionDeps, registry: dict[str, LiveSession]) -> None:
        self._deps = deps
        self._live = registry
        # set by the app: whether a session has open SSE streams here (keeps it from idling)
        self.has_subscribers: Callable[[str], bool] = lambda _sid: False

    async def make_room(self) -> None:
        """At MAX_SESSIONS stop the least recently used idle agent, else -32000."""
        active = [lv for lv in self._live.values() if not lv.stopping]
        if len(active) < self._deps.settings.max_sessions:
            return
        idle = [lv for lv in active if lv.idle]
        if not idle:
            raise AgentError("Gateway at capacity")
        victim = min(idle, key=lambda lv: lv.last_used)
        await victim.stop(reason="capacity")

    async def idle_loop(self) -> None:
        timeout = self._deps.settings.agent_idle_timeout
        interval = min(max(timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for live in list(self._live.values()):
                if self.has_subscribers(live.session_id):
                    live.last_used = now
                if not live.stopping and live.idle and now - live.last_used >= timeout:
                    _ = self._deps.spawn(live.stop(reason="idle"))
