"""GET /api/sessions/events: session lifecycle messages from Redis as SSE.

One pattern subscription per process feeds a bounded queue per open stream, so a thousand
dashboards cost one Redis connection. Messages are forwarded as the bytes Redis carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from redis.exceptions import RedisError

from services.common.auth import allowed_workspaces
from services.common.http import stamp_request_id
from services.common.keys import CHANNELS, REDIS
from services.common.metrics import track_stream
from shared.channels import Channels
from shared.jsonutil import dumps_str, now_iso
from shared.redisconn import Redis

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0  # the API promises a heartbeat at least every 15 s
QUEUE_SIZE = 512  # a stream this far behind is closed; the client re-reads the list
READY_WAIT = 2.0  # how long a new stream waits for the subscription before `connected`
RECONNECT_DELAY = 0.5


@dataclass(eq=False, slots=True)
class Subscriber:
    workspace_id: str | None  # None: every workspace
    # a scoped token without workspaceId: only these (None: no restriction)
    workspaces: frozenset[str] | None = None
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE)
    )

    def close(self) -> None:
        """Wake the stream with the end-of-stream sentinel, even when its queue is full."""
        while True:
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
            else:
                return


class LifecycleHub:
    """The process's one subscription to every workspace's sessions channel."""

    def __init__(self, redis: Redis, channels: Channels) -> None:
        self._redis = redis
        self._channels = channels
        self._subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()
        base = channels.workspace_sessions("\x00")
        self._prefix, self._suffix = base.split("\x00")

    def add(
        self, workspace_id: str | None, workspaces: frozenset[str] | None = None
    ) -> Subscriber:
        sub = Subscriber(workspace_id, workspaces)
        self._subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def close_all(self) -> None:
        for sub in list(self._subscribers):
            sub.close()

    def _workspace_of(self, channel: bytes | str) -> str | None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        if name.startswith(self._prefix) and name.endswith(self._suffix):
            return name[len(self._prefix) : len(name) - len(self._suffix)]
        return None

    def deliver(self, channel: bytes | str, data: bytes) -> None:
        workspace_id = self._workspace_of(channel)
        for sub in list(self._subscribers):
            if sub.workspace_id is not None and sub.workspace_id != workspace_id:
                continue
            if sub.workspaces is not None and workspace_id not in sub.workspaces:
                continue
            try:
                sub.queue.put_nowait(data)
            except asyncio.QueueFull:
                logger.warning("lifecycle stream too slow, closing it")
                self.remove(sub)
                sub.close()

    async def run(self) -> None:
        """Subscribe, forward, and subscribe again after any Redis failure."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._channels.workspace_sessions_pattern)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self.ready.set()
                    elif message["type"] == "pmessage":
                        data = message["data"]
                        if isinstance(data, str):
                            data = data.encode()
                        self.deliver(message["channel"], data)
            except (RedisError, OSError) as err:
                self.ready.clear()
                logger.warning("lifecycle subscription lost: %r", err)
                await asyncio.sleep(RECONNECT_DELAY)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


LIFECYCLE_HUB = web.AppKey("lifecycle_hub", LifecycleHub)
LIFECYCLE_HEARTBEAT = web.AppKey("lifecycle_heartbeat", float)


async def lifecycle_hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """After Redis: the listener task lives as long as the app."""
    app[LIFECYCLE_HUB] = hub = LifecycleHub(app[REDIS], app[CHANNELS])
    task = asyncio.create_task(hub.run(), name="lifecycle-hub")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: a sentinel into every queue ends the handlers at once."""
    app[LIFECYCLE_HUB].close_all()


async def session_events(request: web.Request) -> web.StreamResponse:
    hub = request.app[LIFECYCLE_HUB]
    workspace_id = request.query.get("workspaceId") or None
    sub = hub.add(workspace_id, allowed_workspaces(request))
    watcher: asyncio.Future[None] | None = None
    untrack = track_stream(request.app, "sessions")
    try:
        # subscribed before `connected`, so a change made after it is never missed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT):
                await hub.ready.wait()
        resp = EventSourceResponse(
            sep="\n", ping_interval=request.app[LIFECYCLE_HEARTBEAT]
        )
        resp.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
        stamp_request_id(request, resp)
        await resp.prepare(request)
        # the ping task ends when the client is gone: end the stream then, not at the
        # next message
        watcher = asyncio.ensure_future(resp.wait())
        watcher.add_done_callback(lambda _: sub.close())
        async with resp:
            connected: dict[str, str] = {"type": "connected"}
            if workspace_id is not None:
                connected["workspaceId"] = workspace_id
            connected["at"] = now_iso()
            # a client that left is a normal end of stream, not an error
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                await resp.send(dumps_str(connected))
                while True:
                    item = await sub.queue.get()
                    if item is None:
                        break
                    await resp.send(item.decode())
        return resp
    finally:
        untrack()
        hub.remove(sub)
        if watcher is not None:
            watcher.cancel()


def setup(app: web.Application) -> None:
    app[LIFECYCLE_HEARTBEAT] = HEARTBEAT_SECONDS
    app.cleanup_ctx.append(lifecycle_hub_ctx)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/api/sessions/events", session_events)
