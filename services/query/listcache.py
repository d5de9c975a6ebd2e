"""The warm session-list cache of this process: an in-process L1 of response bytes in front
of Redis reads with a deadline, a breaker, and re-invalidation after a write that could not
reach Redis.

Redis is never required: a slow or absent Redis turns every read into a Postgres read and
every write into a logged warning, never into an error or a hang.

The L1 is kept per list scope, like the Redis entries: one workspace, or every workspace (a
list without `workspaceId`). It keeps read-your-writes across query instances because every
writer publishes the session's workspace on `cache_invalidations` inside the same script that
bumps the generations (shared/cache.py), before it replies. The subscriber here is a raw
protocol: a message naming workspace W drops W's and the unscoped lists, anything else it reads
(other than a PING reply), including a message cut off at the end of a read, drops the whole
L1, synchronously in `data_received`, i.e. in the event loop's I/O phase, before any request
handler that was read in the same or a later loop iteration runs. Redis writes the message to
this socket before the writer even reads the script's reply, so a request caused by the
writer's answer finds the L1 already dropped (same host; across hosts this relies on the
invalidation travelling Redis→here no slower than Redis→writer→client→here). Fills are
guarded by an epoch so a read that raced an invalidation is never kept. While the
subscription is not confirmed, silent for longer than `L1_LIVENESS`, or this process has an
invalidation pending, the L1 is empty and unused.

On a Redis Cluster the invalidation runs as a script on the master of the `{sessions}` slot
and SPUBLISHes on a channel of that slot; the subscriber here SSUBSCRIBEs on that master
(found from the slot map), so the message again reaches this socket while the writer's
command runs, and the writer waits for one more reply from that master before it answers. When the slot moves (a failover, a resharding) the master sends
`sunsubscribe`; a refused SSUBSCRIBE (MOVED: the slot map was stale), a lost connection or a
silent node end the subscription too. Each drops the L1, and the slot map is read again
before subscribing on the slot's current master. Not noticed: a master cut off from the rest
of the cluster that keeps answering this process (until it rejoins and sends `sunsubscribe`).

With a TLS URL (`rediss://`, `rediss+cluster://`) the subscriber speaks TLS with the SSL
context the Redis client itself uses (the URL's `ssl_*` options). asyncio decrypts in the
same I/O callback that reads the socket, so `data_received` still runs before any request
read in the same or a later loop iteration. Only a `unix://` URL gets no L1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import RedisClusterException, RedisError

from shared import cache, lifecycle
from shared.channels import Channels
from shared.lifecycle import LifecycleType
from shared.redisconn import (
    Redis,
    create_cluster,
    is_cluster_url,
    parse_cluster_url,
    ssl_context,
)
from shared.retry import Backoff

logger = logging.getLogger(__name__)

REDIS_OP_TIMEOUT = 0.5  # a hung Redis must not hang a list
BREAKER_SECONDS = 1.0  # after a failure, go straight to Postgres for this long

_REDIS_ERRORS = (RedisError, OSError, TimeoutError, ValueError)

L1_MAX_ENTRIES = (
    4096  # distinct list queries kept in process; beyond that the L1 restarts
)
L1_PING_INTERVAL = 0.5  # the subscriber pings this often ...
L1_LIVENESS = 1.5  # ... and the L1 is unused once it heard nothing for this long


@dataclass(frozen=True, slots=True)
class Lookup:
    """What Redis held for one query: the body (maybe expired) and the generation seen."""

    body: bytes | None = None
    fresh: bool = False
    generation: str | None = None  # None: Redis not usable, do not store
    epoch: int = -1  # L1 epoch before the read; a fill is kept in L1 only if unchanged


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _InvalidationProtocol(asyncio.Protocol):
    """The subscription socket; drops (part of) the L1 in `data_received`, never later.

    `sharded`: an SSUBSCRIBE on a cluster master. Its `sunsubscribe` (the slot moved) or a
    refusal (MOVED) closes the connection, so that the caller subscribes again where the
    slot is now.
    """

    def __init__(self, owner: ListCache, *, sharded: bool = False) -> None:
        self._owner = owner
        self._sharded = sharded
        self._subscribe_kind = b"ssubscribe" if sharded else b"subscribe"
        self._reader = hiredis.Reader()
        self.confirmed = False  # the server confirmed the subscription
        self.subscribed = False  # ... and the L1 may rely on it
        self.was_subscribed = False  # for the reconnect backoff: it worked once
        self.last_heard = time.monotonic()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        frames: list[Any] = []
        try:
            self._reader.feed(data)
            while (frame := self._reader.gets()) is not False:
                frames.append(frame)
        except hiredis.ProtocolError as err:
            logger.warning("cache invalidation subscriber: %r", err)
            self._owner.drop_l1()
            self._end()
            return
        if self._reader.has_data():
            # a frame cut off by this read: whatever it says, it says it now
            self._owner.drop_l1()
        for frame in frames:
            if self._frame(frame):
                return

    def _frame(self, frame: Any) -> bool:
        """Act on one reply or message; True once the subscription is ended."""
        kind = frame[0] if isinstance(frame, list) and frame else None
        if kind == b"pong":
            return False  # a PING reply: nothing changed
        if kind in (b"message", b"smessage") and len(frame) == 3:
            workspace_id = Channels.cache_sessions_invalidated(frame[2])
            if workspace_id is not None:
                self._owner.drop_workspace(workspace_id)
                return False
        self._owner.drop_l1()
        if isinstance(frame, hiredis.ReplyError):
            logger.warning("cache invalidation subscribe refused: %s", frame)
            if self._sharded:
                self._end()
                return True
        elif kind == b"sunsubscribe" and self._sharded:
            logger.info("cache invalidation slot moved; subscribing again")
            self._end()
            return True
        elif kind == self._subscribe_kind and not self.subscribed:
            self.confirmed = True
            if not self._sharded:
                self.subscribed = self.was_subscribed = True
        return False

    def _end(self) -> None:
        self.subscribed = False
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscribed = False
        self._owner.drop_l1()
        if not self.closed.done():
            self.closed.set_result(None)


class ListCache:
    """Per-process view of the shared cache; the source of truth stays Postgres."""

    def __init__(
        self, redis: Redis, channels: Channels, redis_url: str | None = None
    ) -> None:
        self._redis = redis
        self._channels = channels
        self._redis_url = redis_url  # None: no L1
        self._down_until = 0.0
        self._wake = asyncio.Event()
        self.pending_workspaces: set[str] = set()  # invalidations Redis has not taken
        # scope (workspace id, None: every workspace) -> query key -> (body, until epoch ms)
        self._l1: dict[str | None, dict[str, tuple[bytes, int]]] = {}
        self._l1_size = 0
        # Fills are kept only if their scope was not dropped since they began: `_epoch`
        # counts drops; a fill that began at a count below `_dropped_all` (everything
        # dropped) or `_dropped[scope]` (its scope dropped) is void.
        self._epoch = 0
        self._dropped_all = 0
        self._dropped: dict[str | None, int] = {}
        self._listener: _InvalidationProtocol | None = None
        self.l1_hits = 0

    # --- L1 ----------------------------------------------------------------------------

    def drop_l1(self) -> None:
        """Forget every in-process entry and make fills that started before void."""
        self._epoch += 1
        self._dropped_all = self._epoch
        self._dropped.clear()
        self._l1.clear()
        self._l1_size = 0

    def drop_workspace(self, workspace_id: str) -> None:
        """Forget the lists a write to `workspace_id` changes: its own and the unscoped."""
        self._epoch += 1
        if len(self._dropped) >= L1_MAX_ENTRIES:
            # a bounded record: forget when each scope was dropped and void every fill
            # that began before now instead (the entries kept stay)
            self._dropped_all = self._epoch
            self._dropped.clear()
        for scope in (workspace_id, None):
            self._dropped[scope] = self._epoch
            self._l1_size -= len(self._l1.pop(scope, {}))

    @property
    def pending_invalidation(self) -> bool:
        """A write of ours whose invalidation Redis has not taken yet."""
        return bool(self.pending_workspaces)

    @property
    def l1_active(self) -> bool:
        """Subscribed, recently heard from, and no invalidation of ours pending."""
        listener = self._listener
        return (
            listener is not None
            and listener.subscribed
            and not self.pending_invalidation
            and time.monotonic() - listener.last_heard < L1_LIVENESS
            and self.redis_reachable
        )

    def local(self, workspace_id: str | None, query_key: str) -> bytes | None:
        """The L1 body for a query of scope `workspace_id` (None: every workspace), if fresh
        and the L1 can be trusted; synchronous."""
        entries = self._l1.get(workspace_id)
        entry = entries.get(query_key) if entries is not None else None
        if entries is None or entry is None:
            return None
        if entry[1] > _now_ms() and self.l1_active:
            self.l1_hits += 1
            return entry[0]
        del entries[query_key]
        self._l1_size -= 1
        return None

    def _keep(
        self,
        workspace_id: str | None,
        query_key: str,
        epoch: int,
        body: bytes,
        until_ms: int,
    ) -> None:
        if (
            epoch < self._dropped_all
            or epoch < self._dropped.get(workspace_id, 0)
            or not self.l1_active
        ):
            return
        if self._l1_size >= L1_MAX_ENTRIES:
            self._l1.clear()
            self._l1_size = 0
        entries = self._l1.setdefault(workspace_id, {})
        if query_key not in entries:
            self._l1_size += 1
        entries[query_key] = (body, until_ms)

    async def run_invalidations(self) -> None:
        """Owned by the app: keeps the subscription that lets the L1 be used at all."""
        if self._redis_url is None:
            return
        if is_cluster_url(self._redis_url):
            await self._run_cluster_invalidations(self._redis_url)
            return
        # read as redis-py reads it for the client, so both reach the same server
        server = parse_url(self._redis_url)
        if server.get("connection_class") is UnixDomainSocketConnection:
            logger.info("no in-process list cache for unix:// URLs")
            return
        usable, tls = _client_tls(self._redis_url)
        if not usable:
            return
        channel = self._channels.cache_invalidations
        await self._keep_subscribed(
            lambda: self._listen(
                server.get("host", "localhost"),
                server.get("port", 6379),
                server.get("username"),
                server.get("password"),
                _resp("SUBSCRIBE", channel),
                tls=tls,
            )
        )

    async def _run_cluster_invalidations(self, redis_url: str) -> None:
        """SSUBSCRIBE on the master of the `{sessions}` slot, found again on every attempt."""
        parsed = parse_cluster_url(redis_url)
        usable, tls = _client_tls(redis_url)
        if not usable:
            return
        channel = self._channels.cache_invalidations_sharded
        cluster = create_cluster(redis_url)

        async def listen() -> None:
            async with asyncio.timeout(REDIS_OP_TIMEOUT * 4):
                # the slot map as it is now: after a failover the slot has a new master
                await cluster.nodes_manager.initialize()
            node = cluster.get_node_from_key(channel)
            if node is None:
                raise OSError(f"no node serves the slot of {channel}")

            async def is_master() -> bool:
                # asked after the subscription is confirmed: a replica accepts an
                # SSUBSCRIBE too (from a slot map read mid-failover) but hears the message
                # only through replication, maybe after the writer's reply; a master that
                # is demoted later sends `sunsubscribe`
                async with asyncio.timeout(REDIS_OP_TIMEOUT * 2):
                    role = await cluster.execute_command("ROLE", target_nodes=node)
                first = role[0] if isinstance(role, list | tuple) and role else role
                return first in (b"master", "master")

            await self._listen(
                node.host,
                int(node.port),
                parsed.username,
                parsed.password,
                _resp("SSUBSCRIBE", channel),
                tls=tls,
                verify=is_master,
            )

        try:
            await self._keep_subscribed(listen)
        finally:
            with contextlib.suppress(Exception):
                await cluster.aclose()

    async def _keep_subscribed(self, listen: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff()
        while True:
            try:
                await listen()
            except (OSError, TimeoutError, RedisError, RedisClusterException) as err:
                logger.debug("cache invalidation subscriber: %r", err)
            finally:
                if self._listener is not None:
                    if self._listener.was_subscribed:
                        backoff.reset()  # a new outage starts from the base delay
                        self._listener.was_subscribed = False
                    self._listener.subscribed = False
                self.drop_l1()
            await backoff.wait()

    async def _listen(
        self,
        host: str,
        port: int,
        user: str | None,
        password: str | None,
        subscribe: bytes,
        *,
        tls: ssl.SSLContext | None = None,
        verify: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """One subscription until it ends; `tls`: the client's SSL context for a TLS URL;
        `verify` (sharded): whether the confirmed subscription may be relied on (the L1
        stays unused until it says so)."""
        loop = asyncio.get_running_loop()
        sharded = verify is not None
        async with asyncio.timeout(REDIS_OP_TIMEOUT * 2):
            transport, proto = await loop.create_connection(
                lambda: _InvalidationProtocol(self, sharded=sharded),
                host,
                port,
                ssl=tls,
            )
        self._listener = proto
        try:
            if password is not None:
                if user:
                    transport.write(_resp("AUTH", user, password))
                else:
                    transport.write(_resp("AUTH", password))
            transport.write(subscribe)
            if verify is not None:
                async with asyncio.timeout(REDIS_OP_TIMEOUT * 2):
                    while not proto.confirmed:
                        if proto.closed.done():
                            return
                        await asyncio.sleep(0.01)
                if not await verify():
                    raise OSError(f"{host}:{port} does not serve the slot as master")
                proto.subscribed = proto.was_subscribed = not proto.closed.done()
            while not proto.closed.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(L1_PING_INTERVAL):
                        await asyncio.shield(proto.closed)
                if transport.is_closing():
                    break  # ended by the protocol (the slot moved): subscribe again
                if time.monotonic() - proto.last_heard >= L1_LIVENESS:
                    raise TimeoutError("cache invalidation subscriber silent")
                transport.write(_resp("PING"))
        finally:
            proto.subscribed = False
            transport.abort()

    def _usable(self) -> bool:
        return not self.pending_invalidation and self.redis_reachable

    @property
    def redis_reachable(self) -> bool:
        """False for a moment after a Redis failure: writers then skip Redis at once."""
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, err: BaseException) -> None:
        self._down_until = time.monotonic() + BREAKER_SECONDS
        logger.warning("redis %s failed: %r", what, err)

    # set by the app to Metrics.cache_lookup; counts hit_local/hit_redis/miss/bypass
    on_lookup: Callable[[str], None] | None = None

    def _count(self, result: str) -> None:
        if self.on_lookup is not None:
            self.on_lookup(result)

    def hit(self, workspace_id: str | None, query_key: str) -> bytes | None:
        """The L1 body, counted as `hit_local`; synchronous, so a hit costs no await."""
        body = self.local(workspace_id, query_key)
        if body is not None:
            self._count("hit_local")
        return body

    async def lookup(self, workspace_id: str | None, query_key: str) -> Lookup:
        """Never raises; a Redis problem is a miss that must not be stored."""
        body = self.hit(workspace_id, query_key)
        if body is not None:
            return Lookup(body, True, None)
        if not self._usable():
            self._count("bypass")
            return Lookup()
        epoch = self._epoch
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT):
                body, until_ms, gen = await cache.read_list_entry(
                    self._redis, self._channels, workspace_id, query_key
                )
        except _REDIS_ERRORS as err:
            self._failed("cache read", err)
            self._count("bypass")
            return Lookup()
        now = _now_ms()
        fresh = body is not None and (until_ms is None or until_ms > now)
        self._count("hit_redis" if fresh else "miss")
        if fresh and body is not None:
            bound = now + cache.LIST_TTL_SECONDS * 1000
            self._keep(
                workspace_id, query_key, epoch, body, min(until_ms or bound, bound)
            )
        return Lookup(body, fresh, gen, epoch)

    async def store(
        self,
        workspace_id: str | None,
        query_key: str,
        generation: str,
        body: bytes,
        ttl: float,
        *,
        epoch: int = -1,
    ) -> None:
        """Keep the body if no write happened since `generation` was read; never raises.

        `epoch` is the Lookup's: the L1 keeps the body only if no invalidation came since.
        """
        if not self._usable():
            return
        until_ms = _now_ms() + int(ttl * 1000)
        self._keep(workspace_id, query_key, epoch, body, until_ms)
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT):
                await cache.store_list_until(
                    self._redis,
                    self._channels,
                    workspace_id,
                    query_key,
                    generation,
                    body,
                    until_ms,
                )
        except _REDIS_ERRORS as err:
            self._failed("cache store", err)

    async def session_changed(
        self,
        type_: LifecycleType,
        session_id: str,
        workspace_id: str,
        changes: dict[str, Any],
    ) -> None:
        """Invalidate and announce a change, bounded in time; called before answering a write.

        When Redis cannot be reached, cached lists may be stale once it is back: this process
        stops reading them and keeps retrying the invalidation (of every workspace it could
        not invalidate) until it succeeds.
        """
        self.drop_workspace(workspace_id)
        if self.redis_reachable and await self._announce(
            type_, session_id, workspace_id, changes
        ):
            return
        self.pending_workspaces.add(workspace_id)
        self._wake.set()

    async def _announce(
        self,
        type_: LifecycleType,
        session_id: str,
        workspace_id: str,
        changes: dict[str, Any],
    ) -> bool:
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT * 2):
                if await lifecycle.session_changed(
                    self._redis,
                    self._channels,
                    type_,
                    session_id,
                    workspace_id,
                    changes,
                ):
                    return True
        except TimeoutError as err:
            self._failed("lifecycle publish", err)
            return False
        self._down_until = time.monotonic() + BREAKER_SECONDS
        return False

    async def run_retries(self) -> None:
        """Owned by the app: retries a pending invalidation until Redis takes it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            backoff = Backoff()
            while self.pending_workspaces:
                workspace_ids = frozenset(self.pending_workspaces)
                try:
                    async with asyncio.timeout(REDIS_OP_TIMEOUT):
                        await cache.invalidate_sessions(
                            self._redis, self._channels, workspace_ids
                        )
                except _REDIS_ERRORS:
                    await backoff.wait()
                else:
                    # writes that failed meanwhile stay pending
                    self.pending_workspaces -= workspace_ids
                    self._down_until = 0.0


def _client_tls(redis_url: str) -> tuple[bool, ssl.SSLContext | None]:
    """The client's SSL context for a TLS URL (None: plain TCP); not usable when its
    options are not (a missing CA file: the Redis client fails too), logged."""
    try:
        return True, ssl_context(redis_url)
    except (OSError, ValueError, RedisError) as err:
        logger.warning("no in-process list cache: TLS options unusable: %r", err)
        return False, None


def _now_ms() -> int:
    return int(time.time() * 1000)
