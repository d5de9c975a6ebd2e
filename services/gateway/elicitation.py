"""Elicitation: the agent's `elicitation/create` held for the user like a permission request.

The request is streamed as an `elicitation_request` event and answered with
`session/respond_elicitation`; it is answered `cancel` when nobody answers within
PROMPT_TIMEOUT, when the turn is cancelled or ends, when the agent withdraws it
(`$/cancel_request`) or when the session stops. Each outcome is recorded as an
`elicitation_response` event, so a client knows the form is no longer pending.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import AgentError

if TYPE_CHECKING:
    from services.gateway.live import LiveSession
    from services.gateway.runtime import SessionManager

ACTIONS = ("accept", "decline", "cancel")


@dataclass(slots=True)
class PendingElicitation:
    elicitation_id: str
    future: asyncio.Future[dict[str, Any]]


# pending requests by live session (the session's state, kept beside it)
_pending: weakref.WeakKeyDictionary[LiveSession, dict[str, PendingElicitation]] = (
    weakref.WeakKeyDictionary()
)


def pending_of(live: LiveSession) -> dict[str, PendingElicitation]:
    return _pending.setdefault(live, {})


def _settle(live: LiveSession, elicitation_id: str, answer: dict[str, Any]) -> bool:
    pending = pending_of(live).pop(elicitation_id, None)
    if pending is None or pending.future.done():
        return False
    live.emit(
        "elicitation_response",
        elicitationId=elicitation_id,
        action=answer["action"],
    )
    pending.future.set_result(answer)
    return True


def cancel(live: LiveSession, elicitation_id: str) -> None:
    """Answer one pending request `cancel` (agent withdrew it, time-out)."""
    _settle(live, elicitation_id, {"action": "cancel"})


def cancel_all(live: LiveSession) -> None:
    """Turn cancelled or ended, session stopping: every pending request is cancelled."""
    for elicitation_id in list(pending_of(live)):
        cancel(live, elicitation_id)


async def request(
    live: LiveSession,
    elicitation_id: str,
    params: dict[str, Any],
    withdrawn: bool = False,
) -> dict[str, Any]:
    """Stream the request and wait for the user's answer (PROMPT_TIMEOUT → cancel).

    `withdrawn`: the agent cancelled it before it got here; recorded and cancelled at
    once, so the log reads the same whichever came first.
    """
    if live.turn is not None and live.turn.cancel_requested:
        return {"action": "cancel"}
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    pending_of(live)[elicitation_id] = PendingElicitation(elicitation_id, future)
    live.emit(
        "elicitation_request",
        elicitationId=elicitation_id,
        **params,
    )
    if withdrawn:
        cancel(live, elicitation_id)
    try:
        async with asyncio.timeout(live.manager.settings.prompt_timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        cancel(live, elicitation_id)
        return {"action": "cancel"}
    finally:
        current = pending_of(live).get(elicitation_id)
        if current is not None and current.future is future:
            del pending_of(live)[elicitation_id]


async def respond(
    manager: SessionManager,
    sid: str,
    elicitation_id: str,
    action: str,
    content: dict[str, Any] | None,
    allowed: frozenset[str] | None = None,
) -> None:
    """The user's answer; -32000 when nothing with that id is pending."""
    live = manager.live.get(sid)
    if live is None:
        await manager.get_session_or_404(sid, allowed)
        raise AgentError(f"No pending elicitation {elicitation_id}")
    manager.check_allowed(live.workspace_id, sid, allowed)
    answer: dict[str, Any] = {"action": action}
    if action == "accept":
        answer["content"] = content or {}
    if not _settle(live, elicitation_id, answer):
        raise AgentError(f"No pending elicitation {elicitation_id}")
    live.last_used = time.monotonic()
