"""Live notes/tasks streams: ONE Redis pub/sub per process fanned out to bounded local queues.

A change made on any instance is published on the workspace's channel; every query
instance's hub receives it and hands the bytes, untouched, to the queues of the streams
watching that channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from redis.exceptions import RedisError

from services.common.http import stamp_request_id
from services.common.keys import CHANNELS, PG_POOL, REDIS
from services.common.metrics import track_stream
from services.query.workspaces import ensure_workspace
from shared.channels import Channels
from shared.jsonutil import dumps_str, now_iso
from shared.models.validation import query_value
from shared.redisconn import Redis

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
DEFAULT_HEARTBEAT = 15.0
STARTUP_WAIT = 2.0


class Subscription:
    """One stream's view of one channel: a bounded queue that ends with a None sentinel."""

    __slots__ = ("channel", "closed", "queue")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        self.closed = False

    def push(self, data: bytes) -> bool:
        """False when the reader is too slow (queue full): the stream is then ended."""
        if self.closed:
            return True
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.close()
            return False
        return True

    def close(self) -> None:
        """End the stream: drop what is queued, leave only the sentinel."""
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveHub:
    """Owns the process's pattern subscription and the local subscriber sets."""

    def __init__(self, redis: Redis, patterns: tuple[str, ...]) -> None:
        self._redis = redis
        self._patterns = patterns
        self._subs: dict[str, set[Subscription]] = {}
        self.ready = asyncio.Event()

    def subscribe(self, channel: str) -> Subscription:
        sub = Subscription(channel)
        self._subs.setdefault(channel, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.channel]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def dispatch(self, channel: str, data: bytes) -> None:
        for sub in list(self._subs.get(channel, ())):
            if not sub.push(data):
                logger.warning("live stream on %s too slow, closing it", channel)
                self.unsubscribe(sub)

    def close_all(self) -> None:
        """Shutdown: every stream gets its sentinel."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()

    async def run(self) -> None:
        """Listen until cancelled; reconnect with backoff when Redis goes away."""
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(*self._patterns)
                confirmed = 0
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    kind = msg["type"]
                    if kind == "pmessage":
                        self.dispatch(_text(msg["channel"]), _bytes(msg["data"]))
                    elif kind == "psubscribe":
                        confirmed += 1
                        if confirmed >= len(self._patterns):
                            self.ready.set()
                            backoff = 0.1
            except (RedisError, OSError) as err:
                self.ready.clear()
                logger.warning("live pub/sub lost (%s); reconnecting", err)
                await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


LIVE_HUB = web.AppKey("live_hub", LiveHub)
HEARTBEAT = web.AppKey("live_heartbeat", float)
_LIVE_TASK = web.AppKey("live_task", asyncio.Task[None])


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    """After Redis: start the listener and give it a moment to subscribe.

    The app starts even when Redis is down; the listener keeps retrying.
    """
    channels = app[CHANNELS]
    hub = LiveHub(
        app[REDIS],
        (channels.workspace_notes_pattern, channels.workspace_tasks_pattern),
    )
    app[LIVE_HUB] = hub
    app[_LIVE_TASK] = asyncio.create_task(hub.run(), name="live-hub")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STARTUP_WAIT):
            await hub.ready.wait()
    yield
    app[_LIVE_TASK].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[_LIVE_TASK]


async def _end_streams(app: web.Application) -> None:
    if LIVE_HUB in app:
        app[LIVE_HUB].close_all()


def setup(app: web.Application) -> None:
    """Idempotent: notes and tasks both call it."""
    if _LIVE_TASK in app or any(ctx is _live_ctx for ctx in app.cleanup_ctx):
        return
    if HEARTBEAT not in app:
        app[HEARTBEAT] = DEFAULT_HEARTBEAT
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_end_streams)


async def stream(
    request: web.Request, channel: str, connected: dict[str, Any]
) -> web.StreamResponse:
    """SSE: the connected frame, then every message of `channel` as a `data:` frame.

    Subscribes before the connected frame so nothing published after it is missed; no id:,
    no event:, no replay; heartbeats are `: ping` comments.
    """
    hub = request.app[LIVE_HUB]
    sub = hub.subscribe(channel)
    resp = EventSourceResponse(sep="\n", ping_interval=request.app[HEARTBEAT])
    watcher: asyncio.Future[None] | None = None
    # /api/notes/events -> "notes", /api/tasks/events -> "tasks"
    untrack = track_stream(request.app, request.path.split("/")[2])
    try:
        stamp_request_id(request, resp)
        await resp.prepare(request)
        # the ping task ends when the client is gone: end the stream then, not at the next message
        watcher = asyncio.ensure_future(resp.wait())
        watcher.add_done_callback(lambda _: sub.close())
        async with resp:
            await resp.send(dumps_str(connected))
            while (data := await sub.queue.get()) is not None:
                await resp.send(data.decode())
    except (ConnectionResetError, TimeoutError):
        pass  # the client left or stalled
    finally:
        untrack()
        hub.unsubscribe(sub)
        if watcher is not None:
            watcher.cancel()
    return resp


async def workspace_stream(
    request: web.Request, channel_of: Callable[[Channels, str], str]
) -> web.StreamResponse:
    """`GET /api/{notes,tasks}/events?workspaceId=`: one workspace's messages."""
    workspace_id = await ensure_workspace(
        request.app[PG_POOL], query_value(request.query, "workspaceId")
    )
    return await stream(
        request,
        channel_of(request.app[CHANNELS], workspace_id),
        {"type": "connected", "workspaceId": workspace_id, "at": now_iso()},
    )
