"""The share-revocation hooks a process registers; shares.py runs them.

Apart from shares.py so that keys.py can name the type without an import cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

RevokedHook = Callable[[str], None]
ResyncHook = Callable[[], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Revocations:
    """Hooks the process registers at setup; `listening` is set while subscribed."""

    on_revoked: list[RevokedHook] = field(default_factory=list)
    on_resync: list[ResyncHook] = field(default_factory=list)
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    subscriptions: int = 0  # confirmed subscriptions so far (one per connection)
    # redis-py's get_message can swallow a task cancellation: the loops check this instead
    stopping: bool = False
