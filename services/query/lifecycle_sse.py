"""GET /api/sessions/events: session lifecycle messages from Redis as SSE.

Every stream shares the query hub's one pattern subscription to the workspaces' sessions
channels (live.py), so a thousand dashboards cost no extra Redis connection; each picks
the workspaces it may see. Messages are forwarded as the bytes Redis carried.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from services.common.apidoc import SSE, api
from services.common.auth import allowed_workspaces
from services.common.keys import CHANNELS
from services.query import live
from services.query.apiparams import WS
from shared.channels import Channels
from shared.jsonutil import now_iso


def _accept(
    channels: Channels, workspace_id: str | None, workspaces: frozenset[str] | None
) -> Callable[[str], bool] | None:
    """Which sessions channels a stream wants: its workspace, within the token's scope."""
    if workspace_id is None and workspaces is None:
        return None
    prefix, suffix = channels.workspace_sessions("\x00").split("\x00")

    def accept(channel: str) -> bool:
        if not (channel.startswith(prefix) and channel.endswith(suffix)):
            return False
        workspace = channel[len(prefix) : len(channel) - len(suffix)]
        if workspace_id is not None and workspace != workspace_id:
            return False
        return workspaces is None or workspace in workspaces

    return accept


@api(
    "SSE of session lifecycle messages (session:created/updated/deleted)",
    "sessions",
    SSE,
    (),
    (WS,),
)
async def session_events(request: web.Request) -> web.StreamResponse:
    channels = request.app[CHANNELS]
    workspace_id = request.query.get("workspaceId") or None
    connected: dict[str, str] = {"type": "connected"}
    if workspace_id is not None:
        connected["workspaceId"] = workspace_id
    connected["at"] = now_iso()
    return await live.stream(
        request,
        "sessions",
        channels.workspace_sessions_pattern,
        connected,
        _accept(channels, workspace_id, allowed_workspaces(request)),
    )
