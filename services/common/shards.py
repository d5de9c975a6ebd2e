"""Sharded pub/sub subscriptions on a Redis Cluster, for the hub.

An SSUBSCRIBE lives on the master that serves the channel's slot, so the hub keeps one
connection per such master (opened on first use) and reads each on its own task. When
a slot moves (a failover, a resharding) its master sends `sunsubscribe` for the channels
it no longer serves; when a node's connection breaks, its channels are lost too. Either
way the channels are subscribed again on the slot's current master once the slot map is
read again, and the hub is told (`on_lost`, then `on_confirmed`), so its streams catch up
from the log: nothing published meanwhile is missed by a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from shared.redisconn import parse_cluster_url
from shared.retry import Backoff

logger = logging.getLogger(__name__)

# How long stop() waits for the readers to take their cancellation before it closes their
# connections, and then for them to end.
UNBLOCK_WAIT = 1.0
STOP_WAIT = 5.0

OnMessage = Callable[[str, bytes], None]
OnChannel = Callable[[str], None]


@dataclass(eq=False)
class _Link:
    node: str
    client: aioredis.Redis
    pubsub: PubSub
    task: asyncio.Task[None] | None = None
    channels: set[str] = field(default_factory=set)


class ShardLinks:
    """The sharded subscriptions of one hub on a Redis Cluster."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        on_message: OnMessage,
        on_confirmed: OnChannel,
        on_lost: OnChannel,
        retry_cap: float = 1.0,
    ) -> None:
        parsed = parse_cluster_url(redis_url)
        self._auth = parsed
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            **parsed.tls_options,  # CA, client certificate: as the app's client
        )
        self.name = name
        self._stopping = False
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._on_lost = on_lost
        self._links: dict[str, _Link] = {}
        self._at: dict[str, str] = {}  # channel -> node it is subscribed on
        self._wanted: set[str] = set()
        self._dirty: set[str] = set()  # wanted, to subscribe again
        self._wake = asyncio.Event()
        self._backoff = Backoff(0.05, retry_cap)
        self._repairer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._repairer = asyncio.create_task(self._repair(), name=f"{self.name}-shards")

    async def stop(self) -> None:
        self._stopping = True
        tasks = {self._repairer, *(link.task for link in self._links.values())}
        running = {task for task in tasks if task is not None}
        for task in running:
            task.cancel()
        if running:
            _, stuck = await asyncio.wait(running, timeout=UNBLOCK_WAIT)
            if stuck:
                # redis-py can swallow a cancellation that lands inside a read
                # (redis/redis-py#2028), and the readers block without a timeout:
                # closing their connections ends the reads, `_stopping` the loops
                for link in list(self._links.values()):
                    await self._close(link)
                _, stuck = await asyncio.wait(stuck, timeout=STOP_WAIT)
            if stuck:
                logger.error("%s: %d shard tasks did not stop", self.name, len(stuck))
        for link in list(self._links.values()):
            await self._close(link)
        self._links.clear()
        with contextlib.suppress(Exception):
            await self._cluster.aclose()

    async def subscribe(self, names: list[str]) -> None:
        """SSUBSCRIBE on the masters of their slots; a failure is retried in the background."""
        self._wanted.update(names)
        await self._place(names)

    async def unsubscribe(self, name: str) -> None:
        self._wanted.discard(name)
        self._dirty.discard(name)
        node = self._at.pop(name, None)
        link = self._links.get(node) if node is not None else None
        if link is None:
            return
        link.channels.discard(name)
        try:
            await asyncio.shield(link.pubsub.sunsubscribe(name))
        except (RedisError, OSError) as err:
            logger.debug("sunsubscribe of %s failed: %s", name, err)

    async def _place(self, names: list[str]) -> None:
        try:
            if self._cluster._initialize:  # first use: read the slot map
                _ = await self._cluster.initialize()
            groups: dict[tuple[str, int], list[str]] = defaultdict(list)
            nodes: dict[str, ClusterNode] = {}
            for name in names:
                node = self._cluster.get_node_from_key(name)
                if node is None:
                    raise RedisError(f"no node serves the slot of {name}")
                nodes[node.name] = node
                groups[(node.name, key_slot(name.encode()))].append(name)
        except (RedisError, OSError) as err:
            logger.warning("%s: cluster slot map unavailable: %s", self.name, err)
            self._lose(names)
            return
        for (node_name, _slot), group in groups.items():
            link = self._link(nodes[node_name])
            try:
                # one SSUBSCRIBE per slot: a multi-channel one must not cross slots
                await link.pubsub.ssubscribe(*group)
            except (RedisError, OSError) as err:
                logger.warning(
                    "%s: ssubscribe on %s failed: %s", self.name, node_name, err
                )
                await self._drop(link)
                self._lose(group)
                continue
            for name in group:
                self._at[name] = node_name
                link.channels.add(name)
            if link.task is None:
                link.task = asyncio.create_task(
                    self._read(link), name=f"{self.name}-shard-{node_name}"
                )

    def _link(self, node: ClusterNode) -> _Link:
        link = self._links.get(node.name)
        if link is None:
            client = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                username=self._auth.username,
                password=self._auth.password,
                ssl=self._auth.tls,
                **self._auth.tls_options,
                socket_connect_timeout=1.0,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
                max_connections=2,
            )
            link = _Link(node.name, client, client.pubsub())
            self._links[node.name] = link
        return link

    async def _read(self, link: _Link) -> None:
        try:
            while not self._stopping:
                # a blocking read, as the hub's own listener: with a timeout redis-py
                # arms a timer around every read, and every event is read here
                message = await link.pubsub.get_message(timeout=None)
                if message is not None:
                    self._handle(link, message)
        except (RedisError, OSError) as err:
            if self._stopping:
                return  # stop() closed the connection under the read
            logger.warning("%s: lost shard node %s: %s", self.name, link.node, err)
        except Exception:  # a bug must not end live delivery of these channels
            logger.exception("%s: shard reader of %s failed", self.name, link.node)
        if self._stopping:
            return  # stop() closes the links
        lost = [name for name, node in self._at.items() if node == link.node]
        link.task = None
        await self._drop(link)
        self._lose(lost)

    def _handle(self, link: _Link, message: dict[str, object]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "smessage":
            data = message.get("data")
            self._on_message(
                channel, data if isinstance(data, bytes) else str(data).encode()
            )
        elif kind == "ssubscribe":
            if self._at.get(channel) == link.node:
                self._on_confirmed(channel)
        elif kind == "sunsubscribe" and self._at.get(channel) == link.node:
            # not ours to drop: the slot moved away from this node (failover, resharding)
            link.channels.discard(channel)
            self._lose([channel])

    def _lose(self, names: list[str]) -> None:
        for name in names:
            if self._at.get(name) is not None:
                node = self._at.pop(name)
                link = self._links.get(node)
                if link is not None:
                    link.channels.discard(name)
            if name in self._wanted:
                self._dirty.add(name)
                self._on_lost(name)
        if self._dirty:
            self._wake.set()

    async def _drop(self, link: _Link) -> None:
        if self._links.get(link.node) is link:
            del self._links[link.node]
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        await self._close(link)

    @staticmethod
    async def _close(link: _Link) -> None:
        with contextlib.suppress(Exception):
            await link.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await link.client.aclose()

    async def _repair(self) -> None:
        """Subscribe lost channels again on their slots' current masters."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                names = [n for n in self._dirty if n in self._wanted]
                self._dirty.clear()
                try:
                    # the slot map moved on: read it again before placing
                    await self._cluster.nodes_manager.initialize()
                except (RedisError, OSError) as err:
                    logger.debug("%s: slot map refresh failed: %s", self.name, err)
                    self._dirty.update(names)
                    for name in names:
                        self._on_lost(name)
                    await self._backoff.wait()
                    continue
                await self._place(names)
                if self._dirty:
                    await self._backoff.wait()
            self._backoff.reset()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
