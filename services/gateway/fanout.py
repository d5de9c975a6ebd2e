"""One Redis pub/sub connection per gateway process, fanned out to the local SSE streams.

The process subscribes to a session's events channel only while it has local subscribers,
and to the workspace lifecycle pattern (a `session:deleted` ends that session's streams).
Each message (the event JSON exactly as stored) is framed once and put on every
subscriber's bounded queue; a subscriber whose queue is full is closed (it reconnects with
Last-Event-ID and loses nothing). Pub/sub is at-most-once, so subscribers are told to catch
up from the Postgres log (`Marker.RESYNC`) whenever delivery may have had a hole: after every
(re)subscription and, while Redis is unreachable, every `poll_interval` (polling the log).
The consumer (sse.py) drops eventIds it already delivered and backfills gaps, so an eventId
is never delivered twice or out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common.keys import CHANNELS, SETTINGS
from services.gateway.keys import FANOUT, STREAM_CONFIG
from shared.channels import Channels

logger = logging.getLogger(__name__)

_DATA_PREFIX = b'data: {"jsonrpc":"2.0","method":"session/update","params":'


def event_frame(event_id: int, payload: bytes) -> bytes:
    """The SSE frame of one stored event (api.md §5.5, §9.1), encoded once for all streams."""
    return b"id: %d\n%s%s}\n\n" % (event_id, _DATA_PREFIX, payload)


_ID_MARK = b'"eventId":"'


def event_id_of(payload: bytes) -> int | None:
    """The eventId of a published event; read from the head our writer puts it in."""
    # Fast path: `{"sessionId":"…","eventId":"N",…` (session_events.build_payload);
    # a full parse per message cost more than the framing itself.
    start = payload.find(_ID_MARK, 0, 80)
    if start != -1:
        start += len(_ID_MARK)
        end = payload.find(b'"', start, start + 20)
        digits = payload[start:end] if end != -1 else b""
        if digits.isdigit():
            return int(digits)
    try:
        value = orjson.loads(payload).get("eventId")
        return int(value)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Knobs of the event streams; tests shrink them."""

    heartbeat_interval: float = 15.0
    queue_size: int = 4096
    # how often streams re-read the log while Redis is unreachable
    poll_interval: float = 0.5
    # how long a new stream waits for its Redis subscription before replaying anyway
    subscribe_wait: float = 2.0


class Marker(enum.Enum):
    RESYNC = "resync"  # catch up from the log after the last delivered eventId
    CLOSE = "close"  # end the stream
    HEARTBEAT = "heartbeat"  # write a comment: the stream was idle (the ticker puts it)


QueueItem: TypeAlias = tuple[int, bytes] | Marker


@dataclass(eq=False, slots=True)
class Subscriber:
    """One open stream's end of the fan-out."""

    session_id: str
    queue: asyncio.Queue[QueueItem]
    closed_reason: str | None = None
    resync_pending: bool = False
    # True while the stream is blocked writing to its client
    writing: bool = False
    # set by every write, cleared by the heartbeat ticker: idle streams get a comment
    wrote: bool = True
    # drops the client connection; set by the stream once its response is prepared
    abort: Callable[[], None] | None = None
    # the share link the stream was opened with: revoking it ends the stream
    share_id: str | None = None

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def offer(self, item: tuple[int, bytes]) -> None:
        if self.closed_reason is not None:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.close("overflow")

    def tick(self) -> None:
        """Heartbeat ticker: queue a comment when nothing was written since the last tick."""
        if self.wrote or self.writing or self.closed_reason is not None:
            self.wrote = False
            return
        if self.queue.empty():
            self.queue.put_nowait(Marker.HEARTBEAT)
            self.wrote = True  # one marker per idle tick, not a pile of them

    def request_resync(self) -> None:
        if self.closed_reason is not None or self.resync_pending:
            return
        self.resync_pending = True
        try:
            self.queue.put_nowait(Marker.RESYNC)
        except asyncio.QueueFull:
            self.close("overflow")

    def close(self, reason: str) -> None:
        """End the stream: what is queued is dropped, the client reconnects and replays.

        A stream stuck writing to a client that does not read would never see the
        sentinel, so its connection is dropped instead.
        """
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(Marker.CLOSE)
        if (reason == "overflow" or self.writing) and self.abort is not None:
            self.abort()


@dataclass(eq=False, slots=True)
class _Channel:
    session_id: str
    name: str
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class Fanout:
    """The process's pub/sub listener and the registry of its open event streams."""

    def __init__(
        self, redis_url: str, channels: Channels, config: StreamConfig
    ) -> None:
        # Its own client without hidden retries: the listener owns reconnection, so it
        # knows when delivery may have had a hole.
        self._redis = aioredis.from_url(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            max_connections=4,
        )
        self._names = channels
        self.config = config
        self._by_session: dict[str, _Channel] = {}
        self._by_name: dict[str, _Channel] = {}
        # SUBSCRIBE commands sent but not yet confirmed, per channel name
        self._pending: dict[str, int] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage_logged = False
        # set while the pattern subscription is confirmed; tests wait on it
        self.connected = asyncio.Event()

    # -- registry -----------------------------------------------------------------------

    def subscriber_count(self, session_id: str | None = None) -> int:
        if session_id is not None:
            channel = self._by_session.get(session_id)
            return len(channel.subscribers) if channel else 0
        return sum(len(c.subscribers) for c in self._by_session.values())

    def subscribers(self, session_id: str) -> list[Subscriber]:
        channel = self._by_session.get(session_id)
        return list(channel.subscribers) if channel else []

    async def subscribe(
        self, session_id: str, share_id: str | None = None
    ) -> Subscriber:
        """Register a stream; returns once live delivery is in place (or Redis is down)."""
        sub = Subscriber(
            session_id, asyncio.Queue(self.config.queue_size), share_id=share_id
        )
        if self._stopping:
            sub.close("shutdown")
            return sub
        channel = self._by_session.get(session_id)
        if channel is None:
            channel = _Channel(session_id, self._names.session_events(session_id))
            self._by_session[session_id] = channel
            self._by_name[channel.name] = channel
            channel.subscribers.add(sub)
            await self._send_subscribe(channel)
        else:
            channel.subscribers.add(sub)
        if self._pubsub is not None and not channel.confirmed.is_set():
            # Replay must start after the subscription is active, or an event published in
            # between would reach neither the replay nor the queue.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.subscribe_wait):
                    await channel.confirmed.wait()
        return sub

    async def unsubscribe(self, sub: Subscriber) -> None:
        """Unregister a stream; the last one of a session drops the Redis subscription."""
        channel = self._by_session.get(sub.session_id)
        if channel is None or sub not in channel.subscribers:
            return
        channel.subscribers.discard(sub)
        if channel.subscribers:
            return
        del self._by_session[sub.session_id]
        del self._by_name[channel.name]
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await asyncio.shield(pubsub.unsubscribe(channel.name))
            except (RedisError, OSError) as err:
                logger.debug("unsubscribe of %s failed: %s", channel.name, err)

    def close_session(self, session_id: str, reason: str = "deleted") -> int:
        """End every local stream of a session; returns how many were open."""
        channel = self._by_session.get(session_id)
        if channel is None:
            return 0
        subs = list(channel.subscribers)
        for sub in subs:
            sub.close(reason)
        return len(subs)

    def close_share(self, share_id: str, reason: str = "revoked") -> int:
        """End every local stream opened with this share link; returns how many."""
        subs = [
            sub
            for channel in self._by_session.values()
            for sub in channel.subscribers
            if sub.share_id == share_id
        ]
        for sub in subs:
            sub.close(reason)
        return len(subs)

    def share_ids(self) -> set[str]:
        """The share links that open local streams were opened with."""
        return {
            sub.share_id
            for channel in self._by_session.values()
            for sub in channel.subscribers
            if sub.share_id is not None
        }

    def close_all(self, reason: str = "shutdown") -> None:
        self._stopping = True
        for channel in list(self._by_session.values()):
            for sub in list(channel.subscribers):
                sub.close(reason)

    def _resync_all(self) -> None:
        for channel in list(self._by_session.values()):
            for sub in list(channel.subscribers):
                sub.request_resync()

    # -- Redis listener -----------------------------------------------------------------

    async def _send_subscribe(self, channel: _Channel) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the listener subscribes every registered channel when it connects
        self._pending[channel.name] = self._pending.get(channel.name, 0) + 1
        try:
            await pubsub.subscribe(channel.name)
        except (RedisError, OSError) as err:
            # The listener sees the broken connection too and reconnects; until then the
            # stream polls the log.
            logger.debug("subscribe to %s failed: %s", channel.name, err)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sse-fanout")
        self._ticker = asyncio.create_task(self._heartbeats(), name="sse-heartbeat")

    async def stop(self) -> None:
        self.close_all()
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()

    async def _heartbeats(self) -> None:
        """One timer for every stream of the process, instead of a timeout per queue wait.

        Ticks at half the interval: a stream that wrote nothing for a whole tick gets a
        HEARTBEAT marker, so no stream stays silent longer than `heartbeat_interval`.
        """
        interval = self.config.heartbeat_interval / 2
        while True:
            await asyncio.sleep(interval)
            for channel in list(self._by_session.values()):
                for sub in channel.subscribers:
                    sub.tick()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as err:
                if not self._outage_logged:
                    logger.warning(
                        "event fan-out lost Redis (%s); streams poll the log", err
                    )
                    self._outage_logged = True
            except Exception:  # a bug must not end live delivery for the process
                logger.exception("event fan-out listener failed; restarting")
            # Redis unreachable: the streams catch up from the log until it is back.
            self._resync_all()
            await asyncio.sleep(self.config.poll_interval)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(self._names.workspace_sessions_pattern)
            # From here registrants send their own SUBSCRIBE; the ones registered before
            # are subscribed below (no await in between, so none is missed).
            self._pending.clear()
            for channel in self._by_session.values():
                channel.confirmed = asyncio.Event()
            self._pubsub = pubsub
            names = list(self._by_name)
            for name in names:
                self._pending[name] = self._pending.get(name, 0) + 1
            if names:
                await pubsub.subscribe(*names)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._on_message(message)
        finally:
            self._pubsub = None
            self.connected.clear()
            for channel in self._by_session.values():
                channel.confirmed.set()  # release waiting registrants: they poll now
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            channel = self._by_name.get(_text(message["channel"]))
            if channel is None:
                return
            payload = message["data"]
            if isinstance(payload, str):
                payload = payload.encode()
            event_id = event_id_of(payload)
            if event_id is None:
                logger.warning("unreadable event on %s dropped", channel.name)
                return
            item = (event_id, event_frame(event_id, payload))
            for sub in list(channel.subscribers):
                sub.offer(item)
        elif kind == "pmessage":
            self._on_lifecycle(message["data"])
        elif kind == "subscribe":
            name = _text(message["channel"])
            left = self._pending.get(name, 0) - 1
            if left > 0:
                self._pending[name] = left
                return
            self._pending.pop(name, None)
            channel = self._by_name.get(name)
            if channel is not None:
                channel.confirmed.set()
                # Anything published while we were not subscribed is in the log.
                for sub in list(channel.subscribers):
                    sub.request_resync()
        elif kind == "psubscribe":
            if self._outage_logged:
                logger.info("event fan-out has Redis again")
                self._outage_logged = False
            self.connected.set()

    def _on_lifecycle(self, data: Any) -> None:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict) or body.get("type") != "session:deleted":
            return
        session_id = body.get("sessionId")
        if isinstance(session_id, str):
            self.close_session(session_id, "deleted")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def close_session_streams(app: web.Application, session_id: str) -> int:
    """End every stream of a session on this process (called when it is deleted)."""
    fanout = app.get(FANOUT)
    return fanout.close_session(session_id, "deleted") if fanout is not None else 0


async def fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owns the listener task; after the Redis ctx so Redis is closed after it stops."""
    config = app.get(STREAM_CONFIG) or StreamConfig()
    fanout = Fanout(app[SETTINGS].redis_url, app[CHANNELS], config)
    app[FANOUT] = fanout
    await fanout.start()
    yield
    await fanout.stop()


async def close_streams_on_shutdown(app: web.Application) -> None:
    """on_shutdown: a sentinel in every queue, so handlers return at once (house-style §2.9)."""
    fanout = app.get(FANOUT)
    if fanout is not None:
        fanout.close_all("shutdown")
