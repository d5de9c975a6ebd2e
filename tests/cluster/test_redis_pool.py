"""On a real Redis Cluster a burst beyond the per-node pool waits for a connection.

redis-py's cluster client fails a command at once when its node's pool is exhausted; the
process's client (shared.redisconn.create_redis) makes such a burst wait up to POOL_WAIT,
as the single-server client does, and only then fails with a ConnectionError (a 503).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from services.common.http import dependency_of
from shared.redisconn import MAX_CONNECTIONS, create_cluster, create_redis
from tests.cluster.harness import RedisClusterServers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers() as servers:
        yield servers


def _keys(burst: int) -> list[str]:
    # one hash tag: every command goes to the same master, so its pool is the bottleneck
    tag = uuid.uuid4().hex
    return [f"test-pool:{{{tag}}}:{i}" for i in range(burst)]


async def test_a_burst_beyond_the_node_pool_waits_instead_of_failing(
    cluster: RedisClusterServers,
) -> None:
    # Each BLPOP holds its connection until it times out, so every one of these commands
    # needs a connection of its own at the same time: twice what the node may open. The
    # client is new: the burst also reads the slot map.
    redis = create_redis(cluster.url)
    try:
        burst = 2 * MAX_CONNECTIONS
        results = await asyncio.gather(
            *(redis.blpop([key], timeout=0.2) for key in _keys(burst)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert results == [None] * burst
        assert await redis.ping()
    finally:
        await redis.aclose()


async def test_a_burst_of_pipelines_waits_too(cluster: RedisClusterServers) -> None:
    redis = create_redis(cluster.url)

    async def one(key: str, transaction: bool) -> list[object]:
        async with redis.pipeline(transaction=transaction) as pipe:
            pipe.blpop([key], timeout=0.2)
            pipe.incr(key + ":n")
            return list(await pipe.execute())

    try:
        keys = _keys(2 * MAX_CONNECTIONS)
        results = await asyncio.gather(
            *(one(key, i % 2 == 0) for i, key in enumerate(keys)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert results == [[None, 1]] * len(keys)
    finally:
        await redis.aclose()


async def test_redis_py_alone_fails_such_a_burst(cluster: RedisClusterServers) -> None:
    """What the waiting is for: the plain cluster client refuses the burst at once."""
    redis = create_cluster(cluster.url, max_connections=4)
    try:
        _ = await redis.initialize()  # the slot map first: only the pool is at stake
        results = await asyncio.gather(
            *(redis.blpop([key], timeout=0.2) for key in _keys(8)),
            return_exceptions=True,
        )
        assert any(isinstance(r, MaxConnectionsError) for r in results), results
    finally:
        await redis.aclose()


async def test_a_command_that_waits_too_long_fails_as_a_lost_connection(
    cluster: RedisClusterServers,
) -> None:
    # two commands in flight at most; they hold their connections far longer than the
    # third may wait for one
    redis = create_cluster(
        cluster.url, max_connections=2, pool_wait=0.2, socket_timeout=10.0
    )
    try:
        results = await asyncio.gather(
            *(redis.blpop([key], timeout=3) for key in _keys(3)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1, results
        err = failures[0]
        assert isinstance(err, RedisConnectionError)
        assert "no Redis connection free" in str(err)
        assert dependency_of(err) == "Redis"  # answered 503, like a Redis outage
        assert await redis.ping()
    finally:
        await redis.aclose()
