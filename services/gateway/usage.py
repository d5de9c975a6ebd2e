"""Usage: what agents report (usage_update, a prompt response's usage) counted in metrics.

The sums on the session row are kept by Postgres itself (a trigger on the stored events,
migration 0008_acp_v1), so the session actor (live.py) only counts metrics by provider
with these functions and tells the list cache that a session's `usage` changed.
"""

from __future__ import annotations

from typing import Any

from services.common.metrics import Metrics

# a turn's usage key → the metric's `kind` label
TOKEN_KINDS: dict[str, str] = {
    "inputTokens": "input",
    "outputTokens": "output",
    "thoughtTokens": "thought",
    "cachedReadTokens": "cached_read",
    "cachedWriteTokens": "cached_write",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def count_cost(
    metrics: Metrics | None, provider: str, last_cost: float, update: dict[str, Any]
) -> float:
    """A `usage_update`'s cumulative cost counted as growth; returns the cost to
    remember for the next one (unchanged when the update carries none)."""
    cost = update.get("cost")
    if metrics is None or not isinstance(cost, dict):
        return last_cost
    amount = _number(cost.get("amount"))
    currency = cost.get("currency")
    if amount is None or not isinstance(currency, str):
        return last_cost
    # a smaller figure is a new agent session (resumed or recreated): count it all
    grown = amount - last_cost if amount >= last_cost else amount
    if grown > 0:
        metrics.agent_cost.labels(provider, currency).inc(grown)
    return amount


def count_tokens(metrics: Metrics | None, provider: str, usage: dict[str, Any]) -> None:
    """A finished turn's token usage (stored on its turn_complete) into the metrics."""
    if metrics is None:
        return
    for key, kind in TOKEN_KINDS.items():
        value = _number(usage.get(key))
        if value is not None and value > 0:
            metrics.agent_tokens.labels(provider, kind).inc(value)
