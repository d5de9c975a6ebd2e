"""The query service's live streams: notes, tasks and session lifecycle, fed by one hub.

A change made on any instance is published on its workspace's channel; every query
instance's hub (services/common/hub.py) receives it and hands the bytes, framed once as
a `data:` frame, to the queues of the streams watching that channel. Notes and tasks
streams subscribe to their workspace's channel; lifecycle streams share the hub's one
pattern subscription to every workspace's sessions channel and pick their workspaces.
Every stream is written by the common SSE writer (services/common/sse.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from services.common.hub import Hub
from services.common.keys import CHANNELS, HUB, PG_POOL, SETTINGS, STREAM_CONFIG
from services.common.sse import SseWriter, data_event, data_frame, pump, track
from services.query.workspaces import ensure_workspace
from shared.channels import Channels
from shared.jsonutil import dumps, now_iso
from shared.models.validation import query_value

STARTUP_WAIT = 2.0  # how long the app waits for the hub's first subscription


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """After Redis: start the hub and give it a moment to subscribe.

    The app starts even when Redis is down; the hub keeps retrying.
    """
    hub = Hub.from_settings(app[SETTINGS], app.get(STREAM_CONFIG), "live streams")
    hub.listen(app[CHANNELS].workspace_sessions_pattern)
    app[HUB] = hub
    await hub.start()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STARTUP_WAIT):
            await hub.connected.wait()
    yield
    await hub.stop()


async def end_streams(app: web.Application) -> None:
    """on_shutdown: a sentinel into every queue ends the handlers at once."""
    if HUB in app:
        app[HUB].close_all()


async def stream(
    request: web.Request,
    kind: str,
    name: str,
    connected: dict[str, Any],
    accept: Callable[[str], bool] | None = None,
) -> web.StreamResponse:
    """SSE: the connected frame, then every message of channel or pattern `name`.

    Subscribes before the connected frame so nothing published after it is missed; no id:,
    no event:, no replay; heartbeats are `: ping` comments. `kind` labels the stream in
    metrics.
    """
    hub = request.app[HUB]
    sub = await hub.subscribe(name, name, data_event, accept=accept)
    writer = SseWriter(sub)
    untrack = track(request.app, kind, sub)
    try:
        await writer.prepare(request)
        await writer.write(data_frame(dumps(connected)))
        await pump(writer)
    except ConnectionResetError:
        pass  # the client left: a normal end of stream
    finally:
        untrack()
        await hub.unsubscribe(sub)
    return writer.resp


async def workspace_stream(
    request: web.Request, channel_of: Callable[[Channels, str], str]
) -> web.StreamResponse:
    """`GET /api/{notes,tasks}/events?workspaceId=`: one workspace's messages."""
    workspace_id = await ensure_workspace(
        request.app[PG_POOL], query_value(request.query, "workspaceId")
    )
    return await stream(
        request,
        # /api/notes/events -> "notes", /api/tasks/events -> "tasks"
        request.path.split("/")[2],
        channel_of(request.app[CHANNELS], workspace_id),
        {"type": "connected", "workspaceId": workspace_id, "at": now_iso()},
    )
