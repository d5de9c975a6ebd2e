"""The one retry policy: delays that double from `base` to `cap`, with jitter.

Every reconnect or retry loop of the services sleeps through a `Backoff`, so a Redis or
Postgres outage ends without every process (and every session's writer) coming back in
the same instant. Our own ten lines rather than `tenacity`/`backoff` (neither is a
dependency): the loops keep their own error handling, logging and resync after an
outage, and only need the next delay.
"""

from __future__ import annotations

import asyncio
import random

# Its own generator: retries never touch the global `random` state (which seeded runs,
# such as the hypothesis fuzz tests, watch).
_RANDOM = random.Random()


class Backoff:
    """Delays base, 2·base, … up to cap, each drawn from [d/2, d] ("equal jitter")."""

    __slots__ = ("_next", "base", "cap")

    def __init__(self, base: float = 0.1, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self._next = base

    @property
    def at_cap(self) -> bool:
        """The delays stopped growing: a caller that may give up does so now."""
        return self._next >= self.cap

    def reset(self) -> None:
        """The operation succeeded: the next failure starts from `base` again."""
        self._next = self.base

    def delay(self) -> float:
        """The next delay to wait, in seconds."""
        ceiling = self._next
        self._next = min(ceiling * 2, self.cap)
        return random.uniform(ceiling / 2, ceiling)

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())
