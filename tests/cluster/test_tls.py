"""The query service's in-process list cache (L1) with a TLS REDIS_URL.

The servers here speak only TLS, with a throwaway CA, and require a client certificate of
it: the L1's raw subscriber works only if it uses the TLS options of the URL exactly as the
Redis client does. A redis-server built without TLS fails these tests, saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from services.query.keys import LIST_CACHE
from shared.redisconn import Redis, create_redis, ssl_context, tls_options
from shared.settings import Settings
from tests.cluster.harness import RedisClusterServers, RedisTlsServer
from tests.cluster.test_list_l1 import WAIT, _channels, _clients, _key, _l1_on, _rounds
from tests.query.sessions_support import names_in, session_client, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def _warm(client: Any, workspace_id: str) -> None:
    """Until a list is served from the L1: the first reads of a new client open its TLS
    connections (and read the slot map), which may outlast the cache's Redis deadline
    and then skip Redis for a moment, as any slow Redis read does."""
    other = f"{workspace_id}-warm"

    async def cached() -> bool:
        _ = await names_in(client, other)
        return client.app[LIST_CACHE].local(other, _key(other)) is not None

    await wait_for(cached, timeout=WAIT)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(tls=True) as servers:
        yield servers


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisTlsServer]:
    with RedisTlsServer() as server:
        yield server


@pytest_asyncio.fixture
async def tls_cluster_redis(tls_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(tls_cluster.url)
    yield client
    await client.aclose()


def test_the_subscriber_gets_the_clients_tls_options(
    tls_cluster: RedisClusterServers,
) -> None:
    url = tls_cluster.url
    assert url.startswith("rediss+cluster://")
    options = tls_options(url)
    assert tls_cluster.tls_files is not None
    assert options["ssl_ca_certs"] == str(tls_cluster.tls_files.ca)
    assert options["ssl_certfile"] == str(tls_cluster.tls_files.cert)
    context = ssl_context(url)
    assert context is not None
    assert context.check_hostname


async def test_l1_on_a_tls_cluster_keeps_read_your_writes(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tls_cluster: RedisClusterServers,
    tls_cluster_redis: Redis,
    pool: Any,
    workspace_id: str,
) -> None:
    a, b, channels = await _clients(aiohttp_client, make_settings, tls_cluster)
    for client in (a, b):
        await _warm(client, workspace_id)
    await _rounds(a, b, pool, tls_cluster_redis, channels, workspace_id, 10)


async def test_l1_on_a_tls_server_keeps_read_your_writes(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tls_server: RedisTlsServer,
    pool: Any,
    workspace_id: str,
) -> None:
    url = tls_server.url
    a = await session_client(aiohttp_client, make_settings, redis_url=url)
    b = await session_client(aiohttp_client, make_settings, redis_url=url)
    for client in (a, b):
        await _l1_on(client)
        await _warm(client, workspace_id)
    redis = create_redis(url)
    try:
        channels = _channels(make_settings(redis_url=url))
        await _rounds(a, b, pool, redis, channels, workspace_id, 10)
    finally:
        await redis.aclose()


async def test_no_l1_when_the_tls_options_are_unusable(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tls_server: RedisTlsServer,
) -> None:
    """A CA file that is not there: the client fails, and the L1 stays off (not a crash)."""
    url = tls_server.url.replace("ca.pem", "missing-ca.pem")
    client = await session_client(aiohttp_client, make_settings, redis_url=url)
    cache = client.app[LIST_CACHE]
    await asyncio.sleep(0.5)  # long enough for a subscription to a reachable server
    assert not cache.l1_active
