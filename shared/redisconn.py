"""Creating Redis clients with the timeouts every process uses, for one server or a cluster.

`REDIS_URL` names a Redis Cluster with the scheme `redis+cluster://` (or `rediss+cluster://`
for TLS) and one or more seed nodes: `redis+cluster://user:pass@10.0.0.1:6379,10.0.0.2:6379`.
The client then is redis-py's cluster client, which learns the slot map from the seeds and
follows MOVED/ASK and failovers on its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

Redis = aioredis.Redis | RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """The parts of a `redis+cluster://` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def is_cluster_url(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(redis_url: str) -> ClusterUrl:
    """`redis+cluster://[user[:pass]@]host:port[,host:port...][/0]`; ValueError when malformed."""
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("not a redis+cluster:// URL")
    rest = rest.split("?", 1)[0]
    rest, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host is a password, like redis-py's URLs
            username, password = None, unquote(user)
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"bad cluster node {item!r}")
        nodes.append((host, int(port)))
    return ClusterUrl(
        tuple(nodes), username, password, scheme.lower().startswith("rediss")
    )


# connections per process (per node on a cluster), and how long a command waits for one
MAX_CONNECTIONS = 64
POOL_WAIT = 2.0

_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "health_check_interval": 10,
}


def create_redis(redis_url: str) -> Redis:
    """A pooled client that fails fast when Redis is down instead of hanging a request."""
    # redis-py's own one retry of a command, jittered like shared/retry.py
    retry = Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=1)
    if is_cluster_url(redis_url):
        return create_cluster(redis_url, retry=retry, max_connections=MAX_CONNECTIONS)
    # A burst beyond the pool's size (a drain stopping hundreds of sessions at once, a
    # storm of session/new) waits up to POOL_WAIT for a connection; redis-py's default
    # pool would fail those commands at once with "Too many connections".
    pool = BlockingConnectionPool.from_url(
        redis_url,
        retry=retry,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT,
        **_TIMEOUTS,
    )
    return aioredis.Redis.from_pool(pool)


def create_cluster(redis_url: str, **options: Any) -> RedisCluster:
    """The cluster client for a `redis+cluster://` URL (reads go to masters only)."""
    parsed = parse_cluster_url(redis_url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **{**_TIMEOUTS, **options},
    )


def create_subscriber(redis_url: str, **options: Any) -> Redis:
    """A client for a long-lived pub/sub listener (its own pool, caller's timeouts)."""
    if is_cluster_url(redis_url):
        return create_cluster(redis_url, **options)
    return aioredis.from_url(redis_url, **options)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def channel_subscribers(redis: Redis, channel: str) -> int:
    """Clients subscribed to a (non-sharded) channel, on every node of a cluster.

    On a cluster PUBSUB NUMSUB and PUBLISH's reply count only the node asked, while a
    subscriber may sit on any node, so the counts of all nodes are summed.
    """
    if isinstance(redis, RedisCluster):
        if redis._initialize:
            _ = await redis.initialize()
        replies = await asyncio.gather(
            *(
                redis.execute_command("PUBSUB NUMSUB", channel, target_nodes=node)
                for node in redis.get_nodes()
            ),
            return_exceptions=True,
        )
        # a node that failed to answer has no subscriber we could reach
        return sum(
            _numsub_count(reply)
            for reply in replies
            if not isinstance(reply, BaseException)
        )
    counts = await redis.pubsub_numsub(channel)
    return _numsub_count(counts)


def _numsub_count(reply: Any) -> int:
    if isinstance(reply, dict):
        return sum(_numsub_count(v) for v in reply.values())
    if isinstance(reply, list) and reply:
        first = reply[0]
        if isinstance(first, (list, tuple)) and len(first) == 2:
            return int(first[1])
        if len(reply) == 2:
            return int(reply[1])
    return 0


async def pubsub_of(redis: Redis) -> PubSub:
    """A pub/sub object; a cluster client reads its slot map first (the pub/sub needs it)."""
    if isinstance(redis, RedisCluster):
        if redis._initialize:
            _ = await redis.initialize()
        return redis.pubsub()
    return redis.pubsub()
