"""Permission requests from the agent: auto-approval, waiting for the user, answers."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from services.gateway.live import LiveSession, PendingPermission
from shared.errors import AgentError, BadRequest

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager


async def request_permission(
    live: LiveSession, params: dict[str, Any]
) -> dict[str, Any]:
    tool_call = params.get("toolCall") or {}
    options = [o for o in params.get("options") or [] if isinstance(o, dict)]
    tool_call_id = str(tool_call.get("toolCallId", ""))
    if live.auto_approve or live.approve_scope is not None:
        allow = next(
            (o for o in options if str(o.get("kind", "")).startswith("allow")), None
        )
        if allow is not None:
            return {"outcome": {"outcome": "selected", "optionId": allow["optionId"]}}
    if live.turn is not None and live.turn.cancel_requested:
        return {"outcome": {"outcome": "cancelled"}}
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    live.cancel_permission(tool_call_id)  # a repeated request replaces the old one
    live.permissions[tool_call_id] = PendingPermission(tool_call_id, options, future)
    update = {
        **{k: v for k, v in tool_call.items() if k != "status"},
        "title": tool_call.get("title") or "Permission requested",
        "status": "waiting",
        "options": options,
    }
    live.emit("tool_call", **update)
    try:
        return await future
    finally:
        if live.permissions.get(tool_call_id) is not None and (
            live.permissions[tool_call_id].future is future
        ):
            del live.permissions[tool_call_id]


async def respond(
    manager: SessionManager,
    sid: str,
    tool_call_id: str,
    option_id: str | None,
    decision: str | None,
    scope: str | None,
    allowed: frozenset[str] | None = None,
) -> None:
    live = manager.live.get(sid)
    if live is None:
        await manager.get_session_or_404(sid, allowed)
        raise AgentError(f"No pending permission request for tool call {tool_call_id}")
    manager.check_allowed(live.workspace_id, sid, allowed)
    pending = live.permissions.get(tool_call_id)
    if pending is None or pending.future.done():
        raise AgentError(f"No pending permission request for tool call {tool_call_id}")
    chosen: dict[str, Any] | None
    if option_id is not None:
        chosen = next(
            (o for o in pending.options if o.get("optionId") == option_id), None
        )
        if chosen is None:
            offered = ", ".join(str(o.get("optionId")) for o in pending.options)
            raise BadRequest(
                f"Invalid response.optionId: {option_id!r} is not offered ({offered})"
            )
    else:
        prefix = "allow" if decision == "approve" else "reject"
        preferred = f"{prefix}_always" if scope == "session" else f"{prefix}_once"
        kinds = [str(o.get("kind", "")) for o in pending.options]
        chosen = next(
            (o for o in pending.options if o.get("kind") == preferred),
            next(
                (
                    o
                    for o, k in zip(pending.options, kinds, strict=True)
                    if k.startswith(prefix)
                ),
                None,
            ),
        )
        if chosen is None:
            raise BadRequest(
                f"Invalid response.decision: the agent offers no {prefix} option"
            )
    kind = str(chosen.get("kind", ""))
    approved = kind.startswith("allow")
    if approved and scope in ("turn", "session"):
        live.approve_scope = scope
    del live.permissions[tool_call_id]
    live.emit(
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
    live.last_used = time.monotonic()
    pending.future.set_result(
        {"outcome": {"outcome": "selected", "optionId": chosen.get("optionId")}}
    )
