"""Usage: what agents report (usage_update, a prompt response's usage) counted and announced.

The sums on the session row are kept by Postgres itself (a trigger on the stored events,
migration 0008_acp_v1), so this module only counts metrics by provider and tells the list
cache that a session's `usage` changed.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import asyncpg

from services.gateway.live import LiveSession
from shared.db import sessions

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

# a turn's usage key → the metric's `kind` label
TOKEN_KINDS: dict[str, str] = {
    "inputTokens": "input",
    "outputTokens": "output",
    "thoughtTokens": "thought",
    "cachedReadTokens": "cached_read",
    "cachedWriteTokens": "cached_write",
}

# the cumulative cost each live session last reported (counted as growth)
_last_cost: weakref.WeakKeyDictionary[LiveSession, float] = weakref.WeakKeyDictionary()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def on_usage_update(
    manager: SessionManager, live: LiveSession, update: dict[str, Any]
) -> None:
    """A `usage_update` (already queued for the log): count its cost, announce the sums."""
    metrics = manager.metrics
    cost = update.get("cost")
    if metrics is not None and isinstance(cost, dict):
        amount = _number(cost.get("amount"))
        currency = cost.get("currency")
        if amount is not None and isinstance(currency, str):
            last = _last_cost.get(live, 0.0)
            # a smaller figure is a new agent session (resumed or recreated): count it all
            grown = amount - last if amount >= last else amount
            _last_cost[live] = amount
            if grown > 0:
                metrics.agent_cost.labels(live.provider, currency).inc(grown)
    manager.spawn(announce(manager, live))


def on_turn_usage(
    manager: SessionManager, live: LiveSession, usage: dict[str, Any]
) -> None:
    """A finished turn's token usage (stored on its turn_complete) into the metrics."""
    metrics = manager.metrics
    if metrics is None:
        return
    for key, kind in TOKEN_KINDS.items():
        value = _number(usage.get(key))
        if value is not None and value > 0:
            metrics.agent_tokens.labels(live.provider, kind).inc(value)


async def announce(manager: SessionManager, live: LiveSession) -> None:
    """Once the event is stored (the trigger summed it), tell readers the new `usage`."""
    await live.writer.flush()
    try:
        session = await sessions.get(manager.pool, live.session_id)
    except (OSError, asyncpg.PostgresError):
        return
    if session is not None and session.usage is not None:
        await manager.announce(
            live.workspace_id, live.session_id, {"usage": session.usage}
        )
