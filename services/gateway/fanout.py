"""One Redis pub/sub connection per gateway process, fanned out to the local SSE streams.

The process subscribes to a session's events channel only while it has local subscribers,
and to the workspace lifecycle pattern (a `session:deleted` ends that session's streams).
Each message (the event JSON exactly as stored) is framed once and put on every
subscriber's bounded queue. A subscriber that does not keep up is closed (it reconnects
with Last-Event-ID and loses nothing): its queue is full, its unsent bytes (queued, in its
transport's write buffer, or unacknowledged in its socket) pass
`StreamLimits.backlog_bytes`, or its client has left bytes unreceived for longer than
`backlog_seconds`. What the streams of the process hold is bounded by `total_bytes`: over
it, the streams with the largest, then oldest, backlog are closed first. New streams over
MAX_SUBSCRIBERS (per session) or MAX_CLIENT_STREAMS (per token or address) get a 429; open
ones are never closed for them. Pub/sub is at-most-once, so subscribers are told to catch
up from the Postgres log (`Marker.RESYNC`) whenever delivery may have had a hole: after every
(re)subscription and, while Redis is unreachable, every `poll_interval` (polling the log).
The consumer (sse.py) drops eventIds it already delivered and backfills gaps, so an eventId
is never delivered twice or out of order.
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

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shared.channels import Channels
from shared.events import event_id_of, sse_frame
from shared.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Knobs of the event streams; tests shrink them."""

    heartbeat_interval: float = 15.0
    queue_size: int = 4096
    # how often streams re-read the log while Redis is unreachable
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
    """One open stream's end of the fan-out, and what it holds unsent."""

    session_id: str
    queue: asyncio.Queue[QueueItem]
    held: Held = field(default_factory=lambda: Held(StreamLimits()))
    # who opened it (token or address), for MAX_CLIENT_STREAMS
    client: str | None = None
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
    marks: deque[tuple[float, int]] = field(default_factory=deque)
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
        if marks and now - marks[-1][0] < MARK_RESOLUTION:
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
        if not unsent:
            marks.clear()
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


@dataclass(eq=False, slots=True)
class _Channel:
    session_id: str
    name: str
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    # the bytes of its longest queue when last counted (Held.frames)
    held: int = 0


class Fanout:
    """The process's pub/sub listener and the registry of its open event streams."""

    def __init__(
        self,
        redis_url: str,
        channels: Channels,
        config: StreamConfig,
        limits: StreamLimits | None = None,
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
        self.limits = limits or StreamLimits()
        self.held = Held(self.limits, self.check_backlogs)
        self._by_session: dict[str, _Channel] = {}
        # open streams per client key (MAX_CLIENT_STREAMS)
        self._clients: dict[str, int] = {}
        self._by_name: dict[str, _Channel] = {}
        # SUBSCRIBE commands sent but not yet confirmed, per channel name
        self._pending: dict[str, int] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._checking = False  # check_backlogs is running (it closes streams)
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

    def client_count(self, client: str) -> int:
        return self._clients.get(client, 0)

    def refusal(self, session_id: str, client: str | None) -> str | None:
        """Why one more stream would pass a cap (a 429's message), or None.

        The caller subscribes with no await in between, so the caps hold under a burst;
        streams already open are never closed for a new one.
        """
        limits = self.limits
        if self.subscriber_count(session_id) >= limits.session_streams:
            return (
                f"Too many event streams for session {session_id} "
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
        session_id: str,
        client: str | None = None,
        share_id: str | None = None,
    ) -> Subscriber:
        """Register a stream; returns once live delivery is in place (or Redis is down)."""
        sub = Subscriber(
            session_id,
            asyncio.Queue(self.config.queue_size),
            self.held,
            client,
            share_id=share_id,
        )
        if self._stopping:
            sub.close("shutdown")
            return sub
        if client is not None:
            self._clients[client] = self._clients.get(client, 0) + 1
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
        sub.release()
        if sub.client is not None:
            left = self._clients.get(sub.client, 0) - 1
            if left > 0:
                self._clients[sub.client] = left
            else:
                self._clients.pop(sub.client, None)
        if channel.subscribers:
            return
        self.held.frames -= channel.held
        channel.held = 0
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
        self._watcher = asyncio.create_task(self._watch(), name="sse-backlog")

    async def stop(self) -> None:
        self.close_all()
        for task in (self._task, self._ticker, self._watcher):
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
        for channel in list(self._by_session.values()):
            top = 0
            for sub in list(channel.subscribers):
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
            channel.held = top
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
            "closed %d event streams that did not keep up (%s); "
            "their clients reconnect with Last-Event-ID",
            closed.total(),
            counts,
        )
        closed.clear()

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
            frame = sse_frame(event_id, payload)
            item = (event_id, frame)
            size = len(frame)
            now = time.monotonic()
            top = 0
            for sub in list(channel.subscribers):
                sub.offer(item, size, now)
                if sub.queued_bytes > top:
                    top = sub.queued_bytes
            held = self.held
            held.frames += top - channel.held
            channel.held = top
            if held.over():
                self.check_backlogs(now)
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
