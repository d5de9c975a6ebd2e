"""One prompt turn's state: the reply the caller waits for, the task running it, its end.

The session actor (live.py) starts, ends and cancels turns; this module knows nothing of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from shared.errors import AgentError


@dataclass(slots=True)
class Turn:
    future: asyncio.Future[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    done: bool = False
    outcome: dict[str, Any] | AgentError | None = None
    # the prompt's `_meta` as sent to the agent (its traceparent is stored on the events)
    meta: dict[str, Any] | None = None
    # the queued prompt this turn runs, when it waited in the queue
    queued_id: str | None = None

    @classmethod
    def begin(cls, meta: dict[str, Any] | None = None) -> Turn:
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        future.add_done_callback(consume)
        return cls(future=future, meta=meta)

    def traced(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """A gateway event of the turn carrying its traceparent as the notification's
        `_meta` (beside `update`, where ACP puts it), so the update keeps its shape."""
        params: dict[str, Any] = {"update": {"sessionUpdate": kind, **fields}}
        traceparent = (self.meta or {}).get("traceparent")
        if traceparent:
            params["_meta"] = {"traceparent": traceparent}
        return params

    def settle(self) -> None:
        """Answer the prompt with the turn's outcome (once)."""
        if self.future.done() or self.outcome is None:
            return
        if isinstance(self.outcome, AgentError):
            self.future.set_exception(self.outcome)
        else:
            self.future.set_result(self.outcome)

    def abandon(self, error: AgentError) -> None:
        """End the turn without an event: someone else wrote its end (a quiet stop)."""
        self.done = True
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(slots=True)
class Queued:
    """A prompt waiting for its session's turn (ifBusy enqueue or interrupt).

    Durable ones are rows of queued_prompts (enqueue); an interrupt waits in memory only,
    for the cancelled turn to end.
    """

    id: str
    blocks: list[dict[str, Any]]
    text: str
    meta: dict[str, Any] | None
    durable: bool


def consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved: someone may never await it."""
    if not fut.cancelled():
        _ = fut.exception()
