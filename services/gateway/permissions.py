"""One session's permission requests: auto-approval, the pending table, the user's answer.

The session actor (live.py) owns a PermissionBroker; the broker reports through the
`emit` function it is given and knows nothing of the actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import AgentError, BadRequest

CANCELLED: dict[str, Any] = {"outcome": {"outcome": "cancelled"}}


def no_pending(tool_call_id: str) -> AgentError:
    return AgentError(f"No pending permission request for tool call {tool_call_id}")


@dataclass(slots=True)
class PendingPermission:
    tool_call_id: str
    options: list[dict[str, Any]]
    future: asyncio.Future[dict[str, Any]]


class PermissionBroker:
    """Answers the agent's session/request_permission, alone or after asking the user."""

    def __init__(
        self, emit: Callable[..., int], *, auto_approve_permissions: bool
    ) -> None:
        self._emit = emit
        self.auto_approve_permissions = auto_approve_permissions
        self.approve_scope: str | None = None  # "turn" | "session" after an approval
        self.pending: dict[str, PendingPermission] = {}

    async def request(
        self, params: dict[str, Any], *, turn_cancelled: bool
    ) -> dict[str, Any]:
        tool_call = params.get("toolCall") or {}
        options = [o for o in params.get("options") or [] if isinstance(o, dict)]
        tool_call_id = str(tool_call.get("toolCallId", ""))
        if self.auto_approve_permissions or self.approve_scope is not None:
            allow = next(
                (o for o in options if str(o.get("kind", "")).startswith("allow")),
                None,
            )
            if allow is not None:
                return {
                    "outcome": {"outcome": "selected", "optionId": allow["optionId"]}
                }
        if turn_cancelled:
            return dict(CANCELLED)
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self.cancel(tool_call_id)  # a repeated request replaces the old one
        self.pending[tool_call_id] = PendingPermission(tool_call_id, options, future)
        update = {
            **{k: v for k, v in tool_call.items() if k != "status"},
            "title": tool_call.get("title") or "Permission requested",
            "status": "waiting",
            "options": options,
        }
        self._emit("tool_call", **update)
        try:
            return await future
        finally:
            held = self.pending.get(tool_call_id)
            if held is not None and held.future is future:
                del self.pending[tool_call_id]

    def respond(
        self,
        tool_call_id: str,
        option_id: str | None,
        decision: str | None,
        scope: str | None,
    ) -> None:
        """The user's answer: an option by id, or approve/deny (+ scope) by kind."""
        pending = self.pending.get(tool_call_id)
        if pending is None or pending.future.done():
            raise no_pending(tool_call_id)
        chosen = (
            _by_id(pending.options, option_id)
            if option_id is not None
            else _by_decision(pending.options, decision, scope)
        )
        kind = str(chosen.get("kind", ""))
        approved = kind.startswith("allow")
        if approved and scope in ("turn", "session"):
            self.approve_scope = scope
        del self.pending[tool_call_id]
        self._emit(
            "tool_call_update",
            toolCallId=tool_call_id,
            status="in_progress" if approved else "failed",
            _meta={
                "permission": {
                    "outcome": "selected",
                    "optionId": chosen.get("optionId"),
                    "kind": kind,
                }
            },
        )
        pending.future.set_result(
            {"outcome": {"outcome": "selected", "optionId": chosen.get("optionId")}}
        )

    def cancel(self, tool_call_id: str) -> None:
        pending = self.pending.pop(tool_call_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(dict(CANCELLED))

    def cancel_all(self) -> None:
        for tool_call_id in list(self.pending):
            self.cancel(tool_call_id)

    def turn_ended(self) -> None:
        """An approval for the turn ends with it."""
        if self.approve_scope == "turn":
            self.approve_scope = None


def _by_id(options: list[dict[str, Any]], option_id: str) -> dict[str, Any]:
    chosen = next((o for o in options if o.get("optionId") == option_id), None)
    if chosen is None:
        offered = ", ".join(str(o.get("optionId")) for o in options)
        raise BadRequest(
            f"Invalid response.optionId: {option_id!r} is not offered ({offered})"
        )
    return chosen


def _by_decision(
    options: list[dict[str, Any]], decision: str | None, scope: str | None
) -> dict[str, Any]:
    """The option of the preferred kind (`allow_always` for scope session), else any."""
    prefix = "allow" if decision == "approve" else "reject"
    preferred = f"{prefix}_always" if scope == "session" else f"{prefix}_once"
    chosen = next(
        (o for o in options if o.get("kind") == preferred),
        next((o for o in options if str(o.get("kind", "")).startswith(prefix)), None),
    )
    if chosen is None:
        raise BadRequest(
            f"Invalid response.decision: the agent offers no {prefix} option"
        )
    return chosen
