"""The in-process L1 of list bytes: used, dropped by every invalidation at once, off while
its subscription is down, and never filled by a read that raced an invalidation."""

from __future__ import annotations

import uuid

from services.query.keys import LIST_CACHE
from services.query.session_views import parse_list_query
from shared import cache
from tests.proxy import TcpProxy
from tests.query.sessions_support import (
    make_session,
    names_in,
    session_client,
    wait_for,
)


def _key(workspace_id: str) -> str:
    return parse_list_query({"workspaceId": workspace_id}).cache_key


async def _l1_on(client) -> None:
    async def active() -> bool:
        return client.app[LIST_CACHE].l1_active

    await wait_for(active, timeout=10)


async def test_warm_lists_come_from_the_l1(
    aiohttp_client, make_settings, pool, workspace_id
):
    client = await session_client(aiohttp_client, make_settings)
    await _l1_on(client)
    sid = await make_session(pool, workspace_id, name="kept")
    assert (await names_in(client, workspace_id))[sid] == "kept"
    list_cache = client.app[LIST_CACHE]
    assert list_cache.local(workspace_id, _key(workspace_id)) is not None
    hits = list_cache.l1_hits
    assert (await names_in(client, workspace_id))[sid] == "kept"
    assert list_cache.l1_hits == hits + 1


async def test_an_invalidation_empties_every_l1_before_the_writer_resumes(
    aiohttp_client, make_settings, pool, redis, channels, workspace_id
):
    """No await between the writer's invalidation and the L1 check: the drop must already
    have happened when the writer gets its reply, not in some later subscriber task."""
    a = await session_client(aiohttp_client, make_settings)
    b = await session_client(aiohttp_client, make_settings)
    await _l1_on(a)
    await _l1_on(b)
    sid = await make_session(pool, workspace_id, name="v0")
    key = _key(workspace_id)
    for round_ in range(1, 51):
        assert (await names_in(a, workspace_id))[sid] == f"v{round_ - 1}"
        assert (await names_in(b, workspace_id))[sid] == f"v{round_ - 1}"
        assert a.app[LIST_CACHE].local(workspace_id, key) is not None
        assert b.app[LIST_CACHE].local(workspace_id, key) is not None
        await pool.execute(
            "UPDATE sessions SET name = $2 WHERE session_id = $1",
            uuid.UUID(sid),
            f"v{round_}",
        )
        await cache.invalidate_sessions(redis, channels, {workspace_id})
        assert a.app[LIST_CACHE].local(workspace_id, key) is None
        assert b.app[LIST_CACHE].local(workspace_id, key) is None


async def test_rename_on_one_instance_is_read_at_once_on_the_other(
    aiohttp_client, make_settings, pool, workspace_id
):
    a = await session_client(aiohttp_client, make_settings)
    b = await session_client(aiohttp_client, make_settings)
    await _l1_on(a)
    await _l1_on(b)
    sid = await make_session(pool, workspace_id, name="n0")
    for round_ in range(1, 31):
        assert (await names_in(b, workspace_id))[sid] == f"n{round_ - 1}"
        resp = await a.patch(f"/api/sessions/{sid}", json={"name": f"n{round_}"})
        assert resp.status == 200
        assert (await names_in(b, workspace_id))[sid] == f"n{round_}"
    assert b.app[LIST_CACHE].l1_hits > 0


async def test_l1_is_dropped_and_unused_while_the_subscription_is_down(
    aiohttp_client, make_settings, redis_url, pool, redis, channels, workspace_id
):
    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    try:
        client = await session_client(
            aiohttp_client, make_settings, redis_url=proxy.rewrite(redis_url)
        )
        await _l1_on(client)
        sid = await make_session(pool, workspace_id, name="old")
        assert (await names_in(client, workspace_id))[sid] == "old"
        assert (
            client.app[LIST_CACHE].local(workspace_id, _key(workspace_id)) is not None
        )

        await proxy.stop()  # this instance hears no invalidation from now on
        await pool.execute(
            "UPDATE sessions SET name = 'new' WHERE session_id = $1", uuid.UUID(sid)
        )
        await cache.invalidate_sessions(redis, channels, {workspace_id})
        assert (await names_in(client, workspace_id))[sid] == "new"
        assert not client.app[LIST_CACHE].l1_active

        await proxy.start()
        await _l1_on(client)
        assert (await names_in(client, workspace_id))[sid] == "new"
    finally:
        await proxy.stop()


async def test_a_fill_that_raced_an_invalidation_is_not_kept(
    aiohttp_client, make_settings, pool, workspace_id
):
    client = await session_client(aiohttp_client, make_settings)
    await _l1_on(client)
    list_cache = client.app[LIST_CACHE]
    key = _key(workspace_id)
    hit = await list_cache.lookup(workspace_id, key)
    assert not hit.fresh
    assert hit.generation is not None
    list_cache.drop_l1()  # an invalidation arrives while the fill reads Postgres
    await list_cache.store(
        workspace_id, key, hit.generation, b'{"sessions":[]}', 60, epoch=hit.epoch
    )
    assert list_cache.local(workspace_id, key) is None
    fresh = await list_cache.lookup(workspace_id, key)
    await list_cache.store(
        workspace_id, key, fresh.generation, b'{"sessions":[]}', 60, epoch=fresh.epoch
    )
    assert list_cache.local(workspace_id, key) == b'{"sessions":[]}'


async def test_no_l1_without_a_subscription(
    aiohttp_client, make_settings, unused_tcp_port_factory, pool, workspace_id
):
    dead = f"redis://127.0.0.1:{unused_tcp_port_factory()}/0"
    client = await session_client(aiohttp_client, make_settings, redis_url=dead)
    sid = await make_session(pool, workspace_id, name="a")
    assert (await names_in(client, workspace_id))[sid] == "a"
    assert client.app[LIST_CACHE].local(workspace_id, _key(workspace_id)) is None
    assert client.app[LIST_CACHE].l1_hits == 0
