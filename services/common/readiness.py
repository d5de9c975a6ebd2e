"""The readiness state of a process, which /readyz (health.py) reads.

Apart from health.py so that keys.py can name the type without an import cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Health:
    """Readiness state of one process; `draining` flips on shutdown so balancers stop sending."""

    service: str
    instance_id: str
    draining: bool = False
    checks: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
