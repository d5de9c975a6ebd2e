"""The warm list cache: read-your-writes across instances, and Redis or Postgres going away."""

from __future__ import annotations

import time
import uuid

import pytest
from yarl import URL

from services.query.app import create_app
from services.query.keys import LIST_CACHE
from shared import cache
from shared.lifecycle import session_changed
from tests.proxy import TcpProxy
from tests.query.sessions_support import (
    list_json,
    make_session,
    names_in,
    session_client,
    wait_for,
)


async def test_read_your_writes_across_two_instances(
    aiohttp_client, make_settings, pool, workspace_id
):
    a = await session_client(aiohttp_client, make_settings)
    b = await session_client(aiohttp_client, make_settings)
    sid = await make_session(pool, workspace_id, name="before")
    # warm both
    assert (await names_in(a, workspace_id))[sid] == "before"
    assert (await names_in(b, workspace_id))[sid] == "before"

    assert (await a.patch(f"/api/sessions/{sid}", json={"name": "after"})).status == 200
    assert (await names_in(b, workspace_id))[sid] == "after"
    assert (await names_in(a, workspace_id))[sid] == "after"

    fork = await (await b.post(f"/api/sessions/{sid}/fork")).json()
    fork_id = fork["session"]["sessionId"]
    assert fork_id in await names_in(a, workspace_id)
    assert (await a.delete(f"/api/sessions/{fork_id}")).status == 200
    assert fork_id not in await names_in(b, workspace_id)


async def test_direct_write_plus_session_changed_is_seen_by_both(
    aiohttp_client, make_settings, pool, redis, channels, workspace_id
):
    a = await session_client(aiohttp_client, make_settings)
    b = await session_client(aiohttp_client, make_settings)
    sid = await make_session(pool, workspace_id, name="one")
    assert (await names_in(a, workspace_id))[sid] == "one"
    assert (await names_in(b, workspace_id))[sid] == "one"

    await pool.execute(
        "UPDATE sessions SET name = 'two' WHERE session_id = $1", uuid.UUID(sid)
    )
    # the cache really is used: without an announcement the warm list is unchanged
    assert (await names_in(a, workspace_id))[sid] == "one"

    assert await session_changed(
        redis, channels, "session:updated", sid, workspace_id, {"name": "two"}
    )
    assert (await names_in(a, workspace_id))[sid] == "two"
    assert (await names_in(b, workspace_id))[sid] == "two"


async def test_a_hit_returns_the_cached_bytes_untouched(
    aiohttp_client, make_settings, pool, workspace_id
):
    client = await session_client(aiohttp_client, make_settings)
    await make_session(pool, workspace_id, name="x")
    first = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    body = await first.read()
    second = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    assert await second.read() == body
    assert second.headers["Cache-Control"] == "no-store"


async def test_a_lapsing_lease_is_not_hidden_by_the_cache(
    aiohttp_client, make_settings, pool, workspace_id
):
    """Nobody writes when an owner's lease runs out; the entry's freshness bound covers it."""
    client = await session_client(aiohttp_client, make_settings)
    sid = await make_session(
        pool,
        workspace_id,
        acp_status="ready",
        status="idle",
        owner_instance_id="gw-dying",
        lease_ttl=1.0,
    )
    listed = await list_json(client, workspaceId=workspace_id)
    assert listed[0]["status"] == "idle"

    async def closed() -> bool:
        sessions = await list_json(client, workspaceId=workspace_id)
        return sessions[0]["sessionId"] == sid and sessions[0]["status"] == "closed"

    await wait_for(closed, timeout=10)


async def test_a_turn_in_another_workspace_does_not_shorten_a_cached_list(
    aiohttp_client, make_settings, pool, redis, channels, workspace_id
):
    """A running turn bounds the cached list of its own workspace to about a second
    (lastActivity moves without a write); another workspace's list keeps its full life."""
    client = await session_client(aiohttp_client, make_settings)
    busy = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", busy)
    await make_session(
        pool,
        busy,
        acp_status="ready",
        status="active",
        owner_instance_id="gw-busy",
        lease_ttl=600.0,
    )
    await make_session(pool, workspace_id, name="quiet")

    async def stored_for(ws: str) -> float:
        """Seconds the cached list of `ws` stays fresh, as the cache stored it."""
        await list_json(client, workspaceId=ws)
        fields = await redis.hgetall(channels.cache_sessions_lists(ws))
        until = [int(v) for k, v in fields.items() if k.endswith(b"#until")]
        assert len(until) == 1, fields
        return (until[0] - time.time() * 1000) / 1000

    assert await stored_for(busy) <= cache.LIST_TTL_SECONDS / 10  # bounded by the turn
    assert await stored_for(workspace_id) > cache.LIST_TTL_SECONDS / 2


async def test_redis_unreachable_lists_and_writes_from_postgres(
    aiohttp_client, make_settings, pool, workspace_id, unused_tcp_port_factory
):
    dead = f"redis://127.0.0.1:{unused_tcp_port_factory()}/0"
    client = await session_client(aiohttp_client, make_settings, redis_url=dead)
    sid = await make_session(pool, workspace_id, name="pg")
    assert (await names_in(client, workspace_id))[sid] == "pg"
    resp = await client.patch(f"/api/sessions/{sid}", json={"name": "renamed"})
    assert resp.status == 200
    assert (await names_in(client, workspace_id))[sid] == "renamed"
    resp = await client.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    resp = await client.get(f"/api/sessions/{sid}/history")
    kinds = [e["update"]["sessionUpdate"] for e in (await resp.json())["history"]]
    assert kinds == ["session_renamed"]  # already closed: no acp_status event


async def test_hanging_redis_does_not_hang_lists(
    aiohttp_client, make_settings, redis_url, pool, workspace_id
):
    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    proxy.blackhole = True  # connections accepted, nothing ever answered
    try:
        client = await session_client(
            aiohttp_client, make_settings, redis_url=proxy.rewrite(redis_url)
        )
        sid = await make_session(pool, workspace_id, name="slow redis")
        for _ in range(3):
            assert (await names_in(client, workspace_id))[sid] == "slow redis"
        resp = await client.patch(f"/api/sessions/{sid}", json={"name": "still works"})
        assert resp.status == 200
        assert (await names_in(client, workspace_id))[sid] == "still works"
    finally:
        await proxy.stop()


async def test_invalidation_lost_to_a_redis_cut_is_retried(
    aiohttp_client, make_settings, redis_url, pool, workspace_id
):
    """A writes while its Redis link is down; B's warm entry must not outlive A's write."""
    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    try:
        a = await session_client(
            aiohttp_client, make_settings, redis_url=proxy.rewrite(redis_url)
        )
        b = await session_client(aiohttp_client, make_settings)
        sid = await make_session(pool, workspace_id, name="v1")
        assert (await names_in(a, workspace_id))[sid] == "v1"
        assert (await names_in(b, workspace_id))[sid] == "v1"

        await proxy.stop()
        assert (
            await a.patch(f"/api/sessions/{sid}", json={"name": "v2"})
        ).status == 200
        assert a.app[LIST_CACHE].pending_invalidation
        # A reads Postgres while its invalidation is pending
        assert (await names_in(a, workspace_id))[sid] == "v2"

        await proxy.start()

        async def b_sees_v2() -> bool:
            return (await names_in(b, workspace_id))[sid] == "v2"

        await wait_for(b_sees_v2, timeout=10)
        await wait_for(
            lambda: _false_async(a.app[LIST_CACHE].pending_invalidation), timeout=10
        )
    finally:
        await proxy.stop()


async def _false_async(value: bool) -> bool:
    return not value


@pytest.fixture
async def pg_proxy(database_url):
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_postgres_down_nothing_cached_is_the_seed_500(
    aiohttp_client, make_settings, database_url, pg_proxy, pool, workspace_id
):
    client = await aiohttp_client(
        create_app(make_settings(database_url=pg_proxy.rewrite(database_url)))
    )
    await make_session(pool, workspace_id, name="cached")
    warm = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    assert warm.status == 200
    warm_body = await warm.read()

    await pg_proxy.stop()
    # the cached list is still served
    resp = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    assert resp.status == 200
    assert await resp.read() == warm_body
    # a query nothing was cached for: the seed's error
    resp = await client.get(
        "/api/sessions", params={"workspaceId": workspace_id, "status": "idle"}
    )
    assert resp.status == 500
    assert await resp.json() == {"error": "Failed to load sessions from database"}
    # other routes name the dependency
    resp = await client.get(f"/api/sessions/{uuid.uuid4()}")
    assert resp.status == 503
    assert (await resp.json())["error"].startswith("Postgres unavailable")


async def test_postgres_down_and_cache_flushed_is_500(
    aiohttp_client, make_settings, database_url, pg_proxy, redis, channels, workspace_id
):
    client = await aiohttp_client(
        create_app(make_settings(database_url=pg_proxy.rewrite(database_url)))
    )
    assert (
        await client.get("/api/sessions", params={"workspaceId": workspace_id})
    ).status == 200
    await pg_proxy.stop()
    await cache.invalidate_sessions(redis, channels, {workspace_id})
    resp = await client.get("/api/sessions", params={"workspaceId": workspace_id})
    assert resp.status == 500
    assert await resp.json() == {"error": "Failed to load sessions from database"}


def test_proxy_rewrites_urls():
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.port = 4242
    url = URL(proxy.rewrite("postgresql://postgres@127.0.0.1:5432/db"))
    assert (url.host, url.port, url.path, url.user) == (
        "127.0.0.1",
        4242,
        "/db",
        "postgres",
    )
