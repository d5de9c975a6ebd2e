"""Concurrent calls for one key share one call (the first caller's) and its answer.

A cached answer that expires under load is asked for by every request that arrives
before the first one's query is back: every AUTH_CACHE_TTL seconds, each request in
flight sent its own "is auth on?" query, queued for the pool and stalled together (the
warm session list's p99). With one call per key, the others wait for that call.

The call runs as a task of its own, so a caller that is cancelled (its client hung up)
does not cancel it for the others; it is short (a bounded Postgres query) and ends by
itself. No library: the maintained async caches memoise results, while here nothing is
kept once the call is over (the callers keep their own cache, with their own rules for
staleness and errors).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One call in flight per key."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """`call()`'s answer (or exception); joined when one for `key` is under way."""
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone
