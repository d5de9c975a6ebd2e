"""One Redis pub/sub connection per process, fanned out to per-stream bounded queues.

Every SSE stream of both processes is fed by a `Hub`: the gateway's session event
streams, and the query service's notes/tasks and session lifecycle streams. A stream
subscribes to a topic: one Redis channel, subscribed only while it has local subscribers,
or one of the hub's patterns, subscribed for as long as the hub runs (a pattern topic's
subscribers pick its channels with `accept`). Each message is encoded once by the topic's
`encode` (the same bytes go to every subscriber) and put on every subscriber's bounded
queue. A subscriber that does not keep up is closed (a gateway client reconnects with
Last-Event-ID and loses nothing): its queue is full, its unsent bytes (queued, in its
transport's write buffer, or unacknowledged in its socket) pass
`StreamLimits.backlog_bytes`, or its client has left bytes unreceived for longer than
`backlog_seconds`. The per-stream limits are checked on the hot path only while its writer
waits on the client. What the streams of the process hold is bounded by `total_bytes`:
over it, the streams with the largest, then oldest, backlog are closed first. New streams
over MAX_SUBSCRIBERS (per topic) or MAX_CLIENT_STREAMS (per token or address) are refused
by `refusal`; open ones are never closed for them. One ticker queues heartbeats for every
idle stream. Pub/sub is at-most-once, so subscribers are told to catch up (`Marker.RESYNC`)
whenever delivery may have had a hole: after every (re)subscription and, while Redis is
unreachable, every `poll_interval`. Redis (un)subscription goes through
`_redis_subscribe`/`_redis_unsubscribe` only. A hub made with `sharded=True` subscribes its
channels (not its patterns) with SSUBSCRIBE: on one server on its own connection, on a
Redis Cluster on the masters of their slots (`services/common/shards.py`). Patterns stay
PSUBSCRIBE on one connection: a cluster broadcasts every plain PUBLISH to all its nodes,
so a pattern subscription on any node sees every lifecycle message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import struct
import termios
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common.shards import ShardLinks
from shared.redisconn import create_subscriber, is_cluster_url, pubsub_of
from shared.retry import Backoff
from shared.settings import Settings

logger = logging.getLogger(__name__)

# How long stop() waits for the hub's tasks to take their cancellation before it closes the
# listener's connection (see stop), and then for them to end.
UNBLOCK_WAIT = 1.0
STOP_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Knobs of the event streams; tests shrink them."""

    # the one heartbeat policy of every SSE stream: none stays silent longer than this,
    # with a margin below the 15 s the API promises
    heartbeat_interval: float = 10.0
    queue_size: int = 4096
    # how often streams re-read their log while Redis is unreachable: the reconnect
    # attempts back off with jitter from poll_interval/2 to twice it
    poll_interval: float = 0.5
    # how long a new stream waits for its Redis subscription before replaying anyway
    subscribe_wait: float = 2.0
    # how often every stream's unsent backlog is measured against StreamLimits
    check_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Caps on streams and on what they hold (settings MAX_SUBSCRIBERS, MAX_CLIENT_STREAMS,
    STREAM_BACKLOG_BYTES, STREAM_BACKLOG_SECONDS, STREAMS_BUFFER_BYTES)."""

    session_streams: int = 100
    client_streams: int = 50  # 0: no cap
    backlog_bytes: int = 4 * 1024 * 1024
    backlog_seconds: float = 5.0
    total_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        return cls(
            session_streams=settings.max_subscribers,
            client_streams=settings.max_client_streams,
            backlog_bytes=settings.stream_backlog_bytes,
            backlog_seconds=settings.stream_backlog_seconds,
            total_bytes=settings.streams_buffer_bytes,
        )


# Reasons a stream is closed because its client does not keep up. Its connection is
# dropped rather than ended: a client that does not read would never take the end.
SLOW = frozenset({"overflow", "backlog", "lagging", "memory"})


class Held:
    """Unsent bytes held for all streams of a process, kept up to date cheaply.

    Queued frames are shared by the subscribers of a session, and every queue holds a
    suffix of the same sequence, so a session holds the bytes of its longest queue;
    socket write buffers are each stream's own. Both sums can run high between checks
    (a queue taken by its writer is counted until the session's next event); the
    process-wide check recounts before it closes anything.
    """

    __slots__ = ("closed", "frames", "limits", "pending", "recount")

    def __init__(
        self, limits: StreamLimits, recount: Callable[[], None] | None = None
    ) -> None:
        self.frames = 0
        self.pending = 0
        self.limits = limits
        self.closed: Counter[str] = Counter()  # slow streams closed, logged per check
        # the fan-out's check_backlogs: recounts and closes streams over the budget
        self.recount = recount

    def over(self) -> bool:
        return self.frames + self.pending > self.limits.total_bytes


class Marker(enum.Enum):
    RESYNC = "resync"  # catch up from the log after the last delivered eventId
    CLOSE = "close"  # end the stream
    HEARTBEAT = "heartbeat"  # write a comment: the stream was idle (the ticker puts it)


QueueItem: TypeAlias = tuple[int, bytes] | Marker


# writes closer together than this share one age mark (Subscriber.marks)
MARK_RESOLUTION = 0.1


def unacked_bytes(fd: int) -> int:
    """Bytes in a socket's kernel send queue that its peer has not acknowledged (Linux).

    A client that does not read first fills the kernel's buffers (megabytes on a fast
    link) before anything stays in the process, so they count as unsent too.
    """
    try:
        out = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", out)[0])


@dataclass(eq=False, slots=True)
class Subscriber:
    """One open stream's end of the hub, and what it holds unsent."""

    # the topic it listens to (a session id, a workspace's channel, …)
    key: str
    queue: asyncio.Queue[QueueItem]
    held: Held = field(default_factory=lambda: Held(StreamLimits()))
    # who opened it (token or address), for MAX_CLIENT_STREAMS
    client: str | None = None
    # on a pattern topic: which of the pattern's channels it wants (None: all)
    accept: Callable[[str], bool] | None = None
    closed_reason: str | None = None
    resync_pending: bool = False
    # True while the stream is blocked writing to its client
    writing: bool = False
    # set by every write, cleared by the heartbeat ticker: idle streams get a comment
    wrote: bool = True
    # the client connection and its socket; set once the response is prepared
    transport: asyncio.Transport | None = None
    fd: int = -1
    # the writer waits on it while the transport holds bytes the socket did not take
    flushed: asyncio.Future[None] | None = None
    # bytes of the events in the queue, and when the oldest of them was queued
    queued_bytes: int = 0
    queued_since: float = 0.0
    # the transport's write buffer (process memory) and the socket's unacknowledged
    # bytes (kernel), when last looked at
    pending: int = 0
    unacked: int = 0
    # bytes handed to the transport so far, and (when, `written` after it) for the
    # writes the client may not have received yet, oldest first
    written: int = 0
    # (None while nothing is unsent: a deque and its block are ~1 KiB per idle stream)
    marks: deque[tuple[float, int]] | None = None
    # the share link the stream was opened with: revoking it ends the stream
    share_id: str | None = None

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def stalled(self) -> bool:
        """Waiting on the client: blocked in a write or for its socket to take more."""
        flushed = self.flushed
        return self.writing or (flushed is not None and not flushed.done())

    def attach(self, transport: asyncio.Transport | None) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        self.fd = sock.fileno() if sock is not None else -1

    def offer(self, item: tuple[int, bytes], size: int, now: float) -> None:
        """Queue an event (`size` bytes, published at `now`) unless the stream is behind."""
        if self.closed_reason is not None:
            return
        limits = self.held.limits
        if not self.queued_bytes:
            self.queued_since = now
        elif now - self.queued_since > limits.backlog_seconds and self.stalled:
            self.close("lagging")
            return
        self.queued_bytes += size
        # A burst queued while the writer is free is taken at once; it counts only
        # while the writer waits on the client.
        if (
            self.queued_bytes + self.pending + self.unacked > limits.backlog_bytes
            and self.stalled
        ):
            self.close("backlog")
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.close("overflow")
            return
        if self.flushed is not None:
            self._wake_if_flushed()

    def taken(self) -> None:
        """The writer took everything queued."""
        self.queued_bytes = 0

    async def writable(self) -> None:
        """Returns once the transport holds nothing the socket did not take.

        aiohttp drains only past 64 KiB written, and a client that does not read
        would leave everything after that in this process; so nothing more is
        written until the socket took the last write. Woken by the next event
        offered or the next backlog check.
        """
        transport = self.transport
        if transport is None or not transport.get_write_buffer_size():
            return
        # uvloop sends small writes at the end of the loop iteration: give it one
        await asyncio.sleep(0)
        if (
            self.closed_reason is not None
            or transport.is_closing()
            or not transport.get_write_buffer_size()
        ):
            return
        self.flushed = asyncio.get_running_loop().create_future()
        try:
            await self.flushed
        finally:
            self.flushed = None

    def _wake_if_flushed(self) -> None:
        flushed = self.flushed
        if flushed is None or flushed.done():
            return
        transport = self.transport
        if (
            self.closed_reason is not None
            or transport is None
            or transport.is_closing()
            or not transport.get_write_buffer_size()
        ):
            flushed.set_result(None)

    def write_started(self, size: int) -> None:
        """`size` bytes go to the transport now."""
        self.wrote = True
        self.writing = True
        self.written += size
        now = time.monotonic()
        marks = self.marks
        if marks is None:
            self.marks = deque(((now, self.written),))
        elif marks and now - marks[-1][0] < MARK_RESOLUTION:
            marks[-1] = (marks[-1][0], self.written)
        else:
            marks.append((now, self.written))

    def write_done(self) -> None:
        self.writing = False
        transport = self.transport
        pending = transport.get_write_buffer_size() if transport is not None else 0
        if pending != self.pending:
            self.held.pending += pending - self.pending
            self.pending = pending
            if self.held.over() and self.held.recount is not None:
                self.held.recount()

    def observe(self) -> int:
        """Measure what the client has not received; forget writes it has wholly.

        Those bytes (the transport's buffer, then the socket's unacknowledged ones) are
        the last bytes written plus chunk framing, so a write has arrived once they are
        no more than what was written after it. Returns the backlog: those bytes, and
        the queue while the writer waits on the client.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            pending = unacked = 0
        else:
            pending = transport.get_write_buffer_size()
            unacked = unacked_bytes(self.fd) if self.fd >= 0 else 0
        self.held.pending += pending - self.pending
        self.pending = pending
        self.unacked = unacked
        unsent = pending + unacked
        marks = self.marks
        if marks is not None:
            if not unsent:
                self.marks = None
            else:
                written = self.written
                while marks and unsent <= written - marks[0][1]:
                    marks.popleft()
        if not pending and self.flushed is not None:
            self._wake_if_flushed()
        return unsent + self.queued_bytes if self.stalled else unsent

    def oldest_unsent(self) -> float | None:
        """Since when the client has left bytes unreceived (None: it has them all)."""
        since = self.marks[0][0] if self.marks else None
        if (
            self.queued_bytes
            and self.stalled
            and (since is None or self.queued_since < since)
        ):
            since = self.queued_since
        return since

    def backlog(self) -> int:
        return self.queued_bytes + self.pending + self.unacked

    def tick(self) -> None:
        """Heartbeat ticker: queue a comment when nothing was written since the last tick."""
        if self.wrote or self.stalled or self.closed_reason is not None:
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

        A stream waiting on a client that does not read would never see the sentinel,
        and one that is behind would never take the end of the response, so their
        connection is dropped instead.
        """
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(Marker.CLOSE)
        self.queued_bytes = 0
        if reason in SLOW:
            self.held.closed[reason] += 1
        if (reason in SLOW or self.stalled) and self.transport is not None:
            self.transport.abort()
        self._wake_if_flushed()
        self.release()

    def release(self) -> None:
        """Stop counting this stream's write buffer in the process's total."""
        self.held.pending -= self.pending
        self.pending = 0


# A topic's encoder: a published payload to (its id, the frame every subscriber gets), or
# None for a payload to drop. Streams without ids use 0.
Encode: TypeAlias = Callable[[bytes], tuple[int, bytes] | None]
# A pattern's own handler (channel, payload), called before its topic's subscribers.
OnPattern: TypeAlias = Callable[[str, bytes], None]


@dataclass(eq=False, slots=True)
class _Topic:
    key: str
    name: str
    encode: Encode
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    # the bytes of its longest queue when last counted (Held.frames)
    held: int = 0


class Hub:
    """The process's pub/sub listener and the registry of its open streams."""

    def __init__(
        self,
        redis_url: str,
        config: StreamConfig,
        limits: StreamLimits | None = None,
        name: str = "hub",
        *,
        sharded: bool = False,
    ) -> None:
        # Its own client without hidden retries: the listener owns reconnection, so it
        # knows when delivery may have had a hole.
        self._redis = create_subscriber(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            max_connections=4,
        )
        self.name = name
        self.config = config
        self.limits = limits or StreamLimits()
        self.sharded = sharded
        self._shards: ShardLinks | None = None
        if sharded and is_cluster_url(redis_url):
            self._shards = ShardLinks(
                redis_url,
                name,
                self.dispatch,
                self._confirm,
                self._lost,
                retry_cap=config.poll_interval,
            )
        self.held = Held(self.limits, self.check_backlogs)
        # subscribed for as long as the hub runs (`listen`)
        self._patterns: dict[str, OnPattern | None] = {}
        self._by_key: dict[str, _Topic] = {}
        self._by_name: dict[str, _Topic] = {}
        # open streams per client key (MAX_CLIENT_STREAMS)
        self._clients: dict[str, int] = {}
        # SUBSCRIBE commands sent but not yet confirmed, per channel name
        self._pending: dict[str, int] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._checking = False  # check_backlogs is running (it closes streams)
        self._stopping = False
        self._outage_logged = False
        self._patterns_confirmed = 0
        # set while the hub's patterns are subscribed; tests wait on it
        self.connected = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        config: StreamConfig | None,
        name: str,
        *,
        sharded: bool = False,
    ) -> Hub:
        """The process's hub: REDIS_URL and the stream budgets of its settings;
        `sharded`: its channels (not its patterns) on SSUBSCRIBE."""
        return cls(
            settings.redis_url,
            config or StreamConfig(),
            StreamLimits.from_settings(settings),
            name=name,
            sharded=sharded,
        )

    def listen(self, pattern: str, on_message: OnPattern | None = None) -> None:
        """Before `start`: subscribe `pattern` for as long as the hub runs.

        Its messages go to `on_message`, then to the subscribers of the topic named
        after the pattern.
        """
        self._patterns[pattern] = on_message

    # -- registry -----------------------------------------------------------------------

    def subscriber_count(self, key: str | None = None) -> int:
        if key is not None:
            topic = self._by_key.get(key)
            return len(topic.subscribers) if topic else 0
        return sum(len(t.subscribers) for t in self._by_key.values())

    def subscribers(self, key: str) -> list[Subscriber]:
        topic = self._by_key.get(key)
        return list(topic.subscribers) if topic else []

    def client_count(self, client: str) -> int:
        return self._clients.get(client, 0)

    def refusal(self, key: str, client: str | None) -> str | None:
        """Why one more stream would pass a cap (a 429's message), or None.

        The caller subscribes with no await in between, so the caps hold under a burst;
        streams already open are never closed for a new one.
        """
        limits = self.limits
        if self.subscriber_count(key) >= limits.session_streams:
            return (
                f"Too many event streams for session {key} "
                f"(MAX_SUBSCRIBERS={limits.session_streams})"
            )
        if (
            client is not None
            and limits.client_streams > 0
            and self._clients.get(client, 0) >= limits.client_streams
        ):
            return (
                "Too many event streams from this client "
                f"(MAX_CLIENT_STREAMS={limits.client_streams})"
            )
        return None

    async def subscribe(
        self,
        key: str,
        name: str,
        encode: Encode,
        *,
        client: str | None = None,
        share_id: str | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> Subscriber:
        """Register a stream on topic `key` (Redis channel or hub pattern `name`).

        Returns once live delivery is in place (or Redis is down).
        """
        sub = Subscriber(
            key,
            asyncio.Queue(self.config.queue_size),
            self.held,
            client,
            accept,
            share_id=share_id,
        )
        if self._stopping:
            sub.close("shutdown")
            return sub
        if client is not None:
            self._clients[client] = self._clients.get(client, 0) + 1
        topic = self._by_key.get(key)
        if topic is None:
            topic = _Topic(key, name, encode)
            self._by_key[key] = topic
            self._by_name[name] = topic
            topic.subscribers.add(sub)
            if name in self._patterns:
                if self.connected.is_set():
                    topic.confirmed.set()
            else:
                await self._send_subscribe(topic)
        else:
            topic.subscribers.add(sub)
        if self._pubsub is not None and not topic.confirmed.is_set():
            # Replay must start after the subscription is active, or an event published in
            # between would reach neither the replay nor the queue.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.subscribe_wait):
                    await topic.confirmed.wait()
        return sub

    async def unsubscribe(self, sub: Subscriber) -> None:
        """Unregister a stream; the last one of a channel drops its Redis subscription."""
        topic = self._by_key.get(sub.key)
        if topic is None or sub not in topic.subscribers:
            return
        topic.subscribers.discard(sub)
        sub.release()
        if sub.client is not None:
            left = self._clients.get(sub.client, 0) - 1
            if left > 0:
                self._clients[sub.client] = left
            else:
                self._clients.pop(sub.client, None)
        if topic.subscribers:
            return
        self.held.frames -= topic.held
        topic.held = 0
        del self._by_key[sub.key]
        del self._by_name[topic.name]
        if topic.name not in self._patterns:
            await self._redis_unsubscribe(topic.name)

    def close_topic(self, key: str, reason: str = "deleted") -> int:
        """End every local stream of a topic; returns how many were open."""
        topic = self._by_key.get(key)
        if topic is None:
            return 0
        subs = list(topic.subscribers)
        for sub in subs:
            sub.close(reason)
        return len(subs)

    def close_share(self, share_id: str, reason: str = "revoked") -> int:
        """End every local stream opened with this share link; returns how many."""
        subs = [
            sub
            for topic in self._by_key.values()
            for sub in topic.subscribers
            if sub.share_id == share_id
        ]
        for sub in subs:
            sub.close(reason)
        return len(subs)

    def share_ids(self) -> set[str]:
        """The share links that open local streams were opened with."""
        return {
            sub.share_id
            for topic in self._by_key.values()
            for sub in topic.subscribers
            if sub.share_id is not None
        }

    def close_all(self, reason: str = "shutdown") -> None:
        self._stopping = True
        for topic in list(self._by_key.values()):
            for sub in list(topic.subscribers):
                sub.close(reason)

    def _resync_all(self) -> None:
        for topic in list(self._by_key.values()):
            for sub in list(topic.subscribers):
                sub.request_resync()

    # -- Redis --------------------------------------------------------------------------

    async def _redis_subscribe(self, pubsub: PubSub, names: list[str]) -> None:
        """SUBSCRIBE, or SSUBSCRIBE for a sharded hub (on a cluster: on the slots' masters)."""
        if self._shards is not None:
            await self._shards.subscribe(names)
            return
        for name in names:
            self._pending[name] = self._pending.get(name, 0) + 1
        if self.sharded:
            await pubsub.ssubscribe(*names)
        else:
            await pubsub.subscribe(*names)

    async def _redis_unsubscribe(self, name: str) -> None:
        if self._shards is not None:
            await self._shards.unsubscribe(name)
            return
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            if self.sharded:
                await asyncio.shield(pubsub.sunsubscribe(name))
            else:
                await asyncio.shield(pubsub.unsubscribe(name))
        except (RedisError, OSError) as err:
            logger.debug("unsubscribe of %s failed: %s", name, err)

    def _confirm(self, name: str) -> None:
        """A channel's subscription is active: its streams catch up on what came before."""
        topic = self._by_name.get(name)
        if topic is not None:
            topic.confirmed.set()
            for sub in list(topic.subscribers):
                sub.request_resync()

    def _lost(self, name: str) -> None:
        """A cluster shard dropped a channel (failover, outage): its streams poll the log."""
        topic = self._by_name.get(name)
        if topic is not None:
            for sub in list(topic.subscribers):
                sub.request_resync()

    async def _send_subscribe(self, topic: _Topic) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the listener subscribes every registered channel when it connects
        try:
            await self._redis_subscribe(pubsub, [topic.name])
        except (RedisError, OSError) as err:
            # The listener sees the broken connection too and reconnects; until then the
            # stream polls its log.
            logger.debug("subscribe to %s failed: %s", topic.name, err)

    async def start(self) -> None:
        if self._shards is not None:
            self._shards.start()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-listener")
        self._ticker = asyncio.create_task(
            self._heartbeats(), name=f"{self.name}-heartbeat"
        )
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.name}-backlog")

    async def stop(self) -> None:
        self.close_all()
        tasks = {t for t in (self._task, self._ticker, self._watcher) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=UNBLOCK_WAIT)
            pubsub = self._pubsub
            if stuck and pubsub is not None:
                # redis-py can swallow a cancellation that lands inside a read
                # (redis/redis-py#2028), and the listener's read blocks without a
                # timeout: closing its connection ends the read, `_stopping` the loop
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                _, stuck = await asyncio.wait(stuck, timeout=STOP_WAIT)
            if stuck:
                logger.error(
                    "%s: %d tasks did not stop: %s", self.name, len(stuck), stuck
                )
        if self._shards is not None:
            await self._shards.stop()
        await self._redis.aclose()

    async def _heartbeats(self) -> None:
        """One timer for every stream of the process, instead of a timeout per queue wait.

        Ticks at half the interval: a stream that wrote nothing for a whole tick gets a
        HEARTBEAT marker, so no stream stays silent longer than `heartbeat_interval`.
        """
        interval = self.config.heartbeat_interval / 2
        while True:
            await asyncio.sleep(interval)
            for topic in list(self._by_key.values()):
                for sub in topic.subscribers:
                    sub.tick()

    async def _watch(self) -> None:
        """Measures every stream's backlog each `check_interval` (StreamLimits)."""
        while True:
            await asyncio.sleep(self.config.check_interval)
            self.check_backlogs()

    def check_backlogs(self, now: float | None = None) -> None:
        """Close the streams that are behind, then keep the total under its budget.

        Also recounts `Held` exactly (its running sums only ever run high).
        """
        if self._checking:
            return
        self._checking = True
        try:
            now = time.monotonic() if now is None else now
            live = self._recount(now)
            excess = self.held.frames + self.held.pending - self.limits.total_bytes
            while excess > 0 and live:
                self._shed(live, excess + self.limits.total_bytes // 4, now)
                live = self._recount(now)
                excess = self.held.frames + self.held.pending - self.limits.total_bytes
        finally:
            self._checking = False
        self._log_closed()

    def _recount(self, now: float) -> list[Subscriber]:
        """Close the streams over their own limits; count what the others hold."""
        limits = self.limits
        held = self.held
        frames = 0
        live: list[Subscriber] = []
        for topic in list(self._by_key.values()):
            top = 0
            for sub in list(topic.subscribers):
                if sub.closed_reason is not None:
                    continue
                backlog = sub.observe()
                since = sub.oldest_unsent()
                if since is not None and now - since > limits.backlog_seconds:
                    sub.close("lagging")
                elif backlog > limits.backlog_bytes:
                    sub.close("backlog")
                else:
                    top = max(top, sub.queued_bytes)
                    live.append(sub)
            topic.held = top
            frames += top
        held.frames = frames
        held.pending = sum(sub.pending for sub in live)
        return live

    @staticmethod
    def _shed(live: list[Subscriber], to_free: int, now: float) -> None:
        """Over STREAMS_BUFFER_BYTES: close the largest, then oldest, backlogs first.

        Frees a quarter of the budget more than the excess, so a flood does not recount
        on every event.
        """

        def key(sub: Subscriber) -> tuple[int, float]:
            since = sub.oldest_unsent()
            return (-sub.backlog(), now if since is None else since)

        freed = 0
        for sub in sorted(live, key=key):
            if freed >= to_free:
                break
            freed += sub.backlog()
            sub.close("memory")

    def _log_closed(self) -> None:
        closed = self.held.closed
        if not closed:
            return
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(closed.items()))
        log = logger.warning if "memory" in closed else logger.info
        log(
            "%s: closed %d streams that did not keep up (%s)",
            self.name,
            closed.total(),
            counts,
        )
        closed.clear()

    async def _run(self) -> None:
        # Reconnect attempts back off with jitter (shared/retry.py); while Redis is away,
        # every attempt also tells the streams to catch up from their log.
        poll = self.config.poll_interval
        backoff = Backoff(poll, 2 * poll)
        while not self._stopping:
            try:
                await self._listen(backoff)
            except (RedisError, OSError) as err:
                if not self._outage_logged:
                    logger.warning("%s lost Redis (%s); streams poll", self.name, err)
                    self._outage_logged = True
            except Exception:  # a bug must not end live delivery for the process
                logger.exception("%s listener failed; restarting", self.name)
            # Redis unreachable: the streams catch up from the log until it is back.
            self._resync_all()
            await backoff.wait()

    async def _listen(self, backoff: Backoff) -> None:
        pubsub = await pubsub_of(self._redis)
        try:
            self._patterns_confirmed = 0
            if self._patterns:
                await pubsub.psubscribe(*self._patterns)
            else:
                await pubsub.connect()  # type: ignore[no-untyped-call]
            # From here registrants send their own SUBSCRIBE; the ones registered before
            # are subscribed below (no await in between, so none is missed).
            self._pending.clear()
            for topic in self._by_key.values():
                topic.confirmed = asyncio.Event()
            self._pubsub = pubsub
            if not self._patterns:
                self._on_connected(backoff)
            names = [name for name in self._by_name if name not in self._patterns]
            if names:
                await self._redis_subscribe(pubsub, names)
            while not self._stopping:
                # A blocking read: with a timeout redis-py arms a timer around every
                # read, which cost the gateway 15% of its events/s stored and published
                # (every event is read here); stop() unblocks a read it cannot cancel.
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._on_message(message, backoff)
        finally:
            self._pubsub = None
            self.connected.clear()
            for topic in self._by_key.values():
                topic.confirmed.set()  # release waiting registrants: they poll now
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_connected(self, backoff: Backoff) -> None:
        if self._outage_logged:
            logger.info("%s has Redis again", self.name)
            self._outage_logged = False
        backoff.reset()
        self.connected.set()
        for name in self._patterns:
            topic = self._by_name.get(name)
            if topic is not None:
                topic.confirmed.set()
                for sub in list(topic.subscribers):
                    sub.request_resync()

    def dispatch(self, name: str, payload: bytes, channel: str | None = None) -> None:
        """One published message of channel or pattern `name` to its topic's queues.

        `channel`: the concrete channel of a pattern message (for `accept`).
        """
        topic = self._by_name.get(name)
        if topic is None:
            return
        encoded = topic.encode(payload)
        if encoded is None:
            logger.warning("unreadable message on %s dropped", name)
            return
        size = len(encoded[1])
        now = time.monotonic()
        top = 0
        subs = list(topic.subscribers)
        if channel is not None:
            subs = [s for s in subs if s.accept is None or s.accept(channel)]
        for sub in subs:
            sub.offer(encoded, size, now)
            if sub.queued_bytes > top:
                top = sub.queued_bytes
        held = self.held
        held.frames += top - topic.held
        topic.held = top
        if held.over():
            self.check_backlogs(now)

    def _on_message(self, message: dict[str, Any], backoff: Backoff) -> None:
        kind = message.get("type")
        if kind in ("message", "smessage"):
            self.dispatch(_text(message["channel"]), _bytes(message["data"]))
        elif kind == "pmessage":
            pattern = _text(message["pattern"])
            channel = _text(message["channel"])
            payload = _bytes(message["data"])
            on_pattern = self._patterns.get(pattern)
            if on_pattern is not None:
                on_pattern(channel, payload)
            self.dispatch(pattern, payload, channel)
        elif kind in ("subscribe", "ssubscribe"):
            name = _text(message["channel"])
            left = self._pending.get(name, 0) - 1
            if left > 0:
                self._pending[name] = left
                return
            self._pending.pop(name, None)
            topic = self._by_name.get(name)
            if topic is not None:
                topic.confirmed.set()
                # Anything published while we were not subscribed is in the log.
                for sub in list(topic.subscribers):
                    sub.request_resync()
        elif kind == "psubscribe":
            self._patterns_confirmed += 1
            if self._patterns_confirmed == len(self._patterns):
                self._on_connected(backoff)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
