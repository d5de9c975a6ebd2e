"""Creating Redis clients with the timeouts every process uses, for one server or a cluster.

`REDIS_URL` names a Redis Cluster with the scheme `redis+cluster://` (or `rediss+cluster://`
for TLS) and one or more seed nodes: `redis+cluster://user:pass@10.0.0.1:6379,10.0.0.2:6379`.
The client then is redis-py's cluster client, which learns the slot map from the seeds and
follows MOVED/ASK and failovers on its own.

A TLS URL (`rediss://`, `rediss+cluster://`) may carry redis-py's `ssl_*` options in its
query (`?ssl_ca_certs=/etc/redis/ca.pem&ssl_cert_reqs=required`); every client made here,
and the raw subscriber of the query service's L1 (`ssl_context`), uses the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import MaxConnectionsError, RedisClusterException

Redis = aioredis.Redis | RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """The parts of a `redis+cluster://` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    tls_options: dict[str, Any] = field(default_factory=dict)  # ssl_* of the query


def is_cluster_url(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(redis_url: str) -> ClusterUrl:
    """`redis+cluster://[user[:pass]@]host:port[,host:port...][/0]`; ValueError when malformed."""
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("not a redis+cluster:// URL")
    rest, _, query = rest.partition("?")
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
    tls = scheme.lower().startswith("rediss")
    options = _ssl_query(query) if tls else {}
    unsupported = sorted(set(options) - _CLUSTER_TLS_OPTIONS)
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} not supported on a Redis Cluster")
    return ClusterUrl(tuple(nodes), username, password, tls, options)


# the ssl_* options redis-py's cluster client takes (its single-server one takes more)
_CLUSTER_TLS_OPTIONS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_cert_reqs",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


def _ssl_query(query: str) -> dict[str, Any]:
    """The `ssl_*` options of a URL query, parsed as redis-py parses a `rediss://` URL's."""
    if not query:
        return {}
    parsed: dict[str, Any] = dict(parse_url(f"rediss://localhost/?{query}"))
    return {k: v for k, v in parsed.items() if k.startswith("ssl_")}


def is_tls_url(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0].lower() in ("rediss", "rediss+cluster")


def tls_options(redis_url: str) -> dict[str, Any]:
    """The `ssl_*` options the clients of a TLS URL use; {} for a plain one."""
    if not is_tls_url(redis_url):
        return {}
    if is_cluster_url(redis_url):
        return dict(parse_cluster_url(redis_url).tls_options)
    return _ssl_query(redis_url.partition("?")[2])


def ssl_context(redis_url: str) -> ssl.SSLContext | None:
    """For a TLS URL, the SSL context redis-py's own connections to it use; else None.

    Built by redis-py's SSLConnection from the URL's options (no I/O), so CA, client
    certificate, verification and hostname checking match the client's exactly.
    """
    if not is_tls_url(redis_url):
        return None
    return SSLConnection(**tls_options(redis_url)).ssl_context.get()


# connections per process (on a cluster: commands in flight, each node's pool a little
# larger), and how long a command waits for one
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
        return create_cluster(
            redis_url, retry=retry, max_connections=MAX_CONNECTIONS, pool_wait=POOL_WAIT
        )
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


def create_cluster(
    redis_url: str, *, pool_wait: float | None = None, **options: Any
) -> RedisCluster:
    """The cluster client for a `redis+cluster://` URL (reads go to masters only).

    `pool_wait`: a burst of commands beyond `max_connections` waits this long for its
    turn (see WaitingCluster) instead of failing at once.
    """
    parsed = parse_cluster_url(redis_url)
    settings: dict[str, Any] = {
        "startup_nodes": [ClusterNode(host, port) for host, port in parsed.nodes],
        "username": parsed.username,
        "password": parsed.password,
        "ssl": parsed.tls,
        **parsed.tls_options,
        **_TIMEOUTS,
        **options,
    }
    if pool_wait is None:
        return RedisCluster(**settings)
    in_flight = int(settings.pop("max_connections", MAX_CONNECTIONS))
    return WaitingCluster(
        in_flight=in_flight,
        pool_wait=pool_wait,
        max_connections=in_flight + CLUSTER_SPARE_CONNECTIONS,
        **settings,
    )


# Per node, beyond the commands in flight: the long-lived pub/sub connections of the
# process's client (a gateway's link and control listeners) and slot-map refreshes.
CLUSTER_SPARE_CONNECTIONS = 8

# set while a task (and the tasks it starts) runs a command that already has its turn
_HAS_TURN: ContextVar[bool] = ContextVar("redis_cluster_turn", default=False)


class _Turns:
    """At most `size` commands in flight; the others wait up to `wait` seconds."""

    def __init__(self, size: int, wait: float) -> None:
        self._free = asyncio.Semaphore(size)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _HAS_TURN.get():  # redis-py calling itself (a pipeline's retry): no deadlock
            yield
            return
        try:
            async with asyncio.timeout(self._wait):
                await self._free.acquire()
        except TimeoutError:
            # a ConnectionError, like the single-server pool's: callers answer 503
            raise MaxConnectionsError(
                f"no Redis connection free within {self._wait:g} s"
            ) from None
        token = _HAS_TURN.set(True)
        try:
            yield
        finally:
            _HAS_TURN.reset(token)
            self._free.release()


class WaitingCluster(RedisCluster):
    """redis-py's cluster client whose commands wait for a connection in a burst.

    redis-py's cluster client keeps a pool per node that has no blocking mode (unlike
    BlockingConnectionPool for one server): a command that finds all `max_connections`
    of its node busy fails at once with MaxConnectionsError ("Too many connections").
    Here at most `in_flight` commands and pipelines of this client run at a time, and
    the others wait up to `pool_wait` seconds for their turn. Each of them holds at most
    one connection per node at any moment (redirects and a pipeline's per-node batches
    run one after the other on a node), so no node's pool is ever asked for more than
    `in_flight`; the nodes are given a few spare connections for long-lived pub/sub.
    Not covered: a transaction pipeline's WATCH, which takes its connection before
    `execute` (this codebase does not use WATCH).
    """

    def __init__(self, *, in_flight: int, pool_wait: float, **options: Any) -> None:
        super().__init__(**options)
        self._turns = _Turns(in_flight, pool_wait)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turns.turn():
            await self.ready()
            return await super().execute_command(*args, **kwargs)

    async def ready(self) -> None:
        """Read the slot map first if it is unknown (a new client, after a lost node).

        redis-py (8.1) decides how to route a command before it reads a missing slot
        map; a burst on a client without one then fails in large part ("Connection
        closed by server", AttributeError), seen on the harness cluster with 10 to 60
        concurrent commands. Reading the map first (once, under redis-py's lock) avoids
        that.
        """
        if self._initialize:
            _ = await self.initialize()

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py's typing marks ClusterPipeline itself as abstract (`_event_dispatcher`)
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]

    def turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._turns.turn()


class _WaitingPipeline(ClusterPipeline):
    """A cluster pipeline that waits for its client's turn before it runs."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, WaitingCluster)
        async with client.turn():
            await client.ready()
            return await super().execute(raise_on_error, allow_redirections)


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
