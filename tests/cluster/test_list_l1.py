"""The query service's in-process list cache (L1) on a real Redis Cluster, in process.

The L1 subscribes with SSUBSCRIBE on the master of the `{sessions}` slot, where the
invalidation script runs and SPUBLISHes. As on a single server, a writer's invalidation must
have emptied every L1 by the time the writer has its reply (no await in between), and when
that master dies the L1 is unused until it has subscribed again on the promoted replica.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis.crc import key_slot

from services.query import listcache
from services.query.keys import LIST_CACHE
from services.query.session_views import parse_list_query
from shared import cache
from shared.channels import Channels
from shared.db import sessions as sessions_db
from shared.redisconn import Redis, create_redis
from shared.settings import Settings
from tests.cluster.harness import RedisClusterServers
from tests.query.sessions_support import (
    make_session,
    names_in,
    session_client,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAIT = 60.0  # hang guard only: a failover takes the node timeout (2 s) and more


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    """Its own cluster: the second test kills a master."""
    with RedisClusterServers() as servers:
        yield servers


@pytest_asyncio.fixture
async def cluster_redis(cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(cluster.url)
    yield client
    await client.aclose()


def _key(workspace_id: str) -> str:
    return parse_list_query({"workspaceId": workspace_id}).cache_key


def _channels(settings: Settings) -> Channels:
    return Channels(settings.redis_prefix, sharded=settings.sharded_pubsub)


async def _clients(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    cluster: RedisClusterServers,
) -> tuple[Any, Any, Channels]:
    settings = make_settings(redis_url=cluster.url)
    a = await session_client(aiohttp_client, make_settings, redis_url=cluster.url)
    b = await session_client(aiohttp_client, make_settings, redis_url=cluster.url)
    for client in (a, b):
        await _l1_on(client)
    return a, b, _channels(settings)


async def _l1_on(client: Any) -> None:
    async def active() -> bool:
        return bool(client.app[LIST_CACHE].l1_active)

    await wait_for(active, timeout=WAIT)


async def _rounds(
    a: Any,
    b: Any,
    pool: Any,
    redis: Redis,
    channels: Channels,
    workspace_id: str,
    rounds: int,
) -> None:
    """Both L1s hold the list; a write and its invalidation; both L1s are empty at once."""
    sid = await make_session(pool, workspace_id, name="v0")
    key = _key(workspace_id)
    for round_ in range(1, rounds + 1):
        for client in (a, b):
            assert (await names_in(client, workspace_id))[sid] == f"v{round_ - 1}"
            assert client.app[LIST_CACHE].local(workspace_id, key) is not None, (
                "L1 not in use"
            )
        await pool.execute(
            "UPDATE sessions SET name = $2 WHERE session_id = $1",
            uuid.UUID(sid),
            f"v{round_}",
        )
        await cache.invalidate_sessions(redis, channels, {workspace_id})
        assert a.app[LIST_CACHE].local(workspace_id, key) is None, ("a", round_)
        assert b.app[LIST_CACHE].local(workspace_id, key) is None, ("b", round_)


async def test_an_invalidation_empties_every_l1_before_the_writer_resumes(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    cluster: RedisClusterServers,
    cluster_redis: Redis,
    pool: Any,
    workspace_id: str,
) -> None:
    a, b, channels = await _clients(aiohttp_client, make_settings, cluster)
    await _rounds(a, b, pool, cluster_redis, channels, workspace_id, 30)


async def test_l1_off_while_its_master_is_dead_and_back_on_the_new_one(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    cluster: RedisClusterServers,
    cluster_redis: Redis,
    pool: Any,
    workspace_id: str,
) -> None:
    a, b, channels = await _clients(aiohttp_client, make_settings, cluster)
    channel = channels.cache_invalidations_sharded
    slot = key_slot(channel.encode())
    master = cluster.master_of_slot(slot)
    replica = cluster.replica_of_slot(slot)
    assert master.proc is not None
    # a fresh replica counts as too long disconnected to take over otherwise
    assert "OK" in replica.cli("CONFIG", "SET", "cluster-replica-validity-factor", "0")
    master.proc.send_signal(signal.SIGKILL)  # a crash: no goodbye, no sunsubscribe
    await asyncio.to_thread(master.proc.wait)

    async def both_off() -> bool:
        return not (a.app[LIST_CACHE].l1_active or b.app[LIST_CACHE].l1_active)

    await wait_for(both_off, timeout=WAIT)

    def promoted() -> bool:
        return replica.role() == "master"

    await wait_for(lambda: asyncio.to_thread(promoted), timeout=WAIT)
    for client in (a, b):
        await _l1_on(client)
    shard_subscribers = replica.cli("PUBSUB", "SHARDNUMSUB", channel).split()
    assert int(shard_subscribers[-1]) == 2
    await _rounds(a, b, pool, cluster_redis, channels, workspace_id, 10)


async def test_a_write_keeps_the_lists_of_other_workspaces_in_every_l1(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    cluster: RedisClusterServers,
    cluster_redis: Redis,
    pool: Any,
    workspace_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One script on the `{sessions}` slot bumps A's and the unscoped generation and
    SPUBLISHes A: at the writer's reply both L1s have dropped A's list, not B's."""

    async def unbounded(
        _conn: Any, _workspace_id: str | None = None
    ) -> tuple[float | None, bool]:
        return None, False  # other tests' live sessions must not bound B's entry

    monkeypatch.setattr(sessions_db, "list_freshness", unbounded)
    # nor may a Redis call slowed by a loaded box turn the L1 off for a moment
    monkeypatch.setattr(listcache, "REDIS_OP_TIMEOUT", 30.0)
    monkeypatch.setattr(listcache, "L1_LIVENESS", 30.0)
    a, b, channels = await _clients(aiohttp_client, make_settings, cluster)
    other = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other)
    sid = await make_session(pool, workspace_id, name="v0")
    kept = await make_session(pool, other, name="kept")
    for client in (a, b):
        assert (await names_in(client, workspace_id))[sid] == "v0"
        assert (await names_in(client, other))[kept] == "kept"
    generation_b = await cluster_redis.get(channels.cache_sessions_generation(other))
    resp = await a.patch(f"/api/sessions/{sid}", json={"name": "v1"})
    assert resp.status == 200, await resp.text()
    for client in (a, b):
        assert client.app[LIST_CACHE].local(workspace_id, _key(workspace_id)) is None
        assert client.app[LIST_CACHE].local(other, _key(other)) is not None
    assert (
        await cluster_redis.get(channels.cache_sessions_generation(other))
        == generation_b
    )
    for client in (b, a):
        assert (await names_in(client, workspace_id))[sid] == "v1"
