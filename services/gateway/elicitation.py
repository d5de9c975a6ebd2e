"""Elicitation: the agent's `elicitation/create` held for the user like a permission request.

The request is streamed as an `elicitation_request` event and answered with
`session/respond_elicitation`; it is answered `cancel` when nobody answers within
PROMPT_TIMEOUT, when the turn is cancelled or ends, when the agent withdraws it
(`$/cancel_request`) or when the session stops. Each outcome is recorded as an
`elicitation_response` event, so a client knows the form is no longer pending.

The session actor (live.py) owns an ElicitationBroker; the broker reports through the
`emit` function it is given and knows nothing of the actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import AgentError

ACTIONS = ("accept", "decline", "cancel")


def no_pending(elicitation_id: str) -> AgentError:
    return AgentError(f"No pending elicitation {elicitation_id}")


@dataclass(slots=True)
class PendingElicitation:
    elicitation_id: str
    future: asyncio.Future[dict[str, Any]]


class ElicitationBroker:
    """Pending elicitation requests of one session, their time-out and their answers."""

    def __init__(self, emit: Callable[..., int], *, timeout: float) -> None:
        self._emit = emit
        self._timeout = timeout
        self.pending: dict[str, PendingElicitation] = {}

    def _settle(self, elicitation_id: str, answer: dict[str, Any]) -> bool:
        pending = self.pending.pop(elicitation_id, None)
        if pending is None or pending.future.done():
            return False
        self._emit(
            "elicitation_response",
            elicitationId=elicitation_id,
            action=answer["action"],
        )
        pending.future.set_result(answer)
        return True

    def cancel(self, elicitation_id: str) -> None:
        """Answer one pending request `cancel` (agent withdrew it, time-out)."""
        self._settle(elicitation_id, {"action": "cancel"})

    def cancel_all(self) -> None:
        """Turn cancelled or ended, session stopping: every pending request is cancelled."""
        for elicitation_id in list(self.pending):
            self.cancel(elicitation_id)

    async def request(
        self,
        elicitation_id: str,
        params: dict[str, Any],
        *,
        withdrawn: bool = False,
        turn_cancelled: bool = False,
    ) -> dict[str, Any]:
        """Stream the request and wait for the user's answer (PROMPT_TIMEOUT → cancel).

        `withdrawn`: the agent cancelled it before it got here; recorded and cancelled at
        once, so the log reads the same whichever came first.
        """
        if turn_cancelled:
            return {"action": "cancel"}
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending[elicitation_id] = PendingElicitation(elicitation_id, future)
        self._emit("elicitation_request", elicitationId=elicitation_id, **params)
        if withdrawn:
            self.cancel(elicitation_id)
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            self.cancel(elicitation_id)
            return {"action": "cancel"}
        finally:
            current = self.pending.get(elicitation_id)
            if current is not None and current.future is future:
                del self.pending[elicitation_id]

    def respond(
        self, elicitation_id: str, action: str, content: dict[str, Any] | None
    ) -> None:
        """The user's answer; -32000 when nothing with that id is pending."""
        answer: dict[str, Any] = {"action": action}
        if action == "accept":
            answer["content"] = content or {}
        if not self._settle(elicitation_id, answer):
            raise no_pending(elicitation_id)
