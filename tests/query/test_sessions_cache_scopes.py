"""Lists are cached per workspace: a write in workspace A drops A's lists and the lists of
every workspace (no `workspaceId`), in Redis and in every query process's L1, before the
writer's reply; the lists of workspace B stay cached."""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

import pytest

from services.query import listcache
from services.query.keys import LIST_CACHE
from services.query.listcache import (
    L1_MAX_ENTRIES,
    ListCache,
    _InvalidationProtocol,
)
from services.query.session_views import parse_list_query
from shared import cache
from shared.db import sessions as sessions_db
from tests.query.sessions_support import (
    list_json,
    make_session,
    names_in,
    session_client,
    wait_for,
)


@pytest.fixture(autouse=True)
def _only_invalidations_end_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other tests' live sessions in the same database would bound every entry to a second,
    and a Redis call slowed by a loaded box would turn the L1 off for a moment (both tested
    elsewhere); here only invalidations may end an entry."""

    async def unbounded(
        _conn: Any, _workspace_id: str | None = None
    ) -> tuple[float | None, bool]:
        return None, False

    monkeypatch.setattr(sessions_db, "list_freshness", unbounded)
    monkeypatch.setattr(listcache, "REDIS_OP_TIMEOUT", 30.0)
    monkeypatch.setattr(listcache, "L1_LIVENESS", 30.0)


async def _workspace(pool) -> str:
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", ws)
    return ws


def _key(**params: str) -> str:
    return parse_list_query(params).cache_key


async def _l1_on(client) -> None:
    async def active() -> bool:
        return client.app[LIST_CACHE].l1_active

    await wait_for(active, timeout=10)


async def _names_of_every_workspace(client, parent: str) -> dict[str, str | None]:
    """A list without `workspaceId` (the children of `parent`, so other tests' rows never
    push ours out of it)."""
    return {
        s["sessionId"]: s.get("name")
        for s in await list_json(client, parentSessionId=parent)
    }


async def test_a_write_in_one_workspace_keeps_the_lists_of_the_others(
    aiohttp_client, make_settings, pool, redis, channels, workspace_id
):
    a = await session_client(aiohttp_client, make_settings)
    b = await session_client(aiohttp_client, make_settings)
    await _l1_on(a)
    await _l1_on(b)
    other = await _workspace(pool)
    parent = await make_session(pool, workspace_id, name="parent")
    sid = await make_session(
        pool, workspace_id, name="v0", parent_session_id=uuid.UUID(parent)
    )
    kept = await make_session(pool, other, name="kept")
    key_a, key_b = _key(workspaceId=workspace_id), _key(workspaceId=other)
    key_all = _key(parentSessionId=parent)

    for client in (a, b):
        assert (await names_in(client, workspace_id))[sid] == "v0"
        assert (await names_in(client, other))[kept] == "kept"
        assert (await _names_of_every_workspace(client, parent))[sid] == "v0"
        list_cache: ListCache = client.app[LIST_CACHE]
        assert list_cache.local(workspace_id, key_a) is not None
        assert list_cache.local(other, key_b) is not None
        assert list_cache.local(None, key_all) is not None
    generation_b = await redis.get(channels.cache_sessions_generation(other))
    generation_all = await redis.get(channels.cache_sessions_generation(None))

    resp = await a.patch(f"/api/sessions/{sid}", json={"name": "v1"})
    assert resp.status == 200, await resp.text()

    # at the writer's reply: A's and the unscoped lists are gone from both L1s, B's stay
    for client in (a, b):
        list_cache = client.app[LIST_CACHE]
        assert list_cache.local(workspace_id, key_a) is None
        assert list_cache.local(None, key_all) is None
        assert list_cache.local(other, key_b) is not None
    # ... and from Redis, where B's generation did not move
    assert await redis.get(channels.cache_sessions_generation(other)) == generation_b
    assert await redis.get(channels.cache_sessions_generation(None)) != generation_all
    assert await redis.hexists(channels.cache_sessions_lists(other), key_b)
    assert not await redis.hexists(channels.cache_sessions_lists(workspace_id), key_a)
    assert not await redis.hexists(channels.cache_sessions_lists(None), key_all)

    # the write shows at once on both instances; B's list is still a hit
    for client, first in ((b, "miss"), (a, "hit_redis")):
        lookups: list[str] = []
        client.app[LIST_CACHE].on_lookup = lookups.append
        assert (await names_in(client, workspace_id))[sid] == "v1"
        assert (await _names_of_every_workspace(client, parent))[sid] == "v1"
        assert (await names_in(client, other))[kept] == "kept"
        assert lookups == [first, first, "hit_local"], lookups


async def test_a_write_racing_a_fill_of_its_workspace_is_not_stored(
    redis, channels, workspace_id
):
    """The fill's generation is its scope's: a write in the workspace (or any write, for
    an unscoped list) voids it; a write elsewhere does not."""
    other = "ws-elsewhere-" + uuid.uuid4().hex[:8]
    for scope, writes, kept in (
        (workspace_id, {workspace_id}, False),
        (None, {other}, False),
        (workspace_id, {other}, True),
    ):
        key = _key(workspaceId=scope) if scope else _key()
        _, _, generation = await cache.read_list_entry(redis, channels, scope, key)
        await cache.invalidate_sessions(redis, channels, writes)
        stored = await cache.store_list_until(
            redis, channels, scope, key, generation, b"[]", 2**41
        )
        assert stored is kept, (scope, writes)
        body, _, _ = await cache.read_list_entry(redis, channels, scope, key)
        assert (body is not None) is kept, (scope, writes)


async def test_an_invalidation_must_name_a_workspace(redis, channels):
    with pytest.raises(ValueError):
        await cache.invalidate_sessions(redis, channels, set())


class _Owner:
    """Records what the subscriber drops: a workspace id, or `*` for everything."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def drop_l1(self) -> None:
        self.dropped.append("*")

    def drop_workspace(self, workspace_id: str) -> None:
        self.dropped.append(workspace_id)


def _message(kind: bytes, payload: bytes) -> bytes:
    parts = [kind, b"chan", payload]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def test_the_subscriber_drops_the_named_workspace_and_all_on_anything_else():
    owner = _Owner()
    proto = _InvalidationProtocol(cast(Any, owner))
    message = _message(b"message", b"ws:a")
    proto.data_received(message[:20])  # cut: it may name anything, so all goes now
    assert owner.dropped == ["*"]
    proto.data_received(message[20:] + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    assert owner.dropped == ["*", "a"]
    proto.data_received(_message(b"message", b"ws:b") + _message(b"message", b"x"))
    assert owner.dropped == ["*", "a", "b", "*"]
    sharded = _InvalidationProtocol(cast(Any, owner), sharded=True)
    sharded.data_received(_message(b"smessage", b"ws:c"))
    assert owner.dropped[-1] == "c"


async def test_a_fill_is_void_after_a_drop_of_its_scope_only(redis, channels):
    list_cache = ListCache(redis, channels)
    list_cache._listener = cast(Any, _Listening())
    other = await list_cache.lookup("b", "kb")
    mine = await list_cache.lookup("a", "ka")
    every = await list_cache.lookup(None, "k")
    list_cache.drop_workspace("a")
    for scope, key, hit in (("a", "ka", mine), (None, "k", every), ("b", "kb", other)):
        assert hit.generation is not None
        await list_cache.store(scope, key, hit.generation, b"[]", 60, epoch=hit.epoch)
    assert list_cache.local("a", "ka") is None
    assert list_cache.local(None, "k") is None
    assert list_cache.local("b", "kb") == b"[]"
    # a full record of drops voids the fills in flight, not what is kept
    fill = await list_cache.lookup("c", "kc")
    for i in range(L1_MAX_ENTRIES + 1):
        list_cache.drop_workspace(f"w{i}")
    assert fill.generation is not None
    await list_cache.store("c", "kc", fill.generation, b"[]", 60, epoch=fill.epoch)
    assert list_cache.local("c", "kc") is None
    assert list_cache.local("b", "kb") == b"[]"


class _Listening:
    """A subscription that is up and was just heard from."""

    subscribed = True

    @property
    def last_heard(self) -> float:
        return time.monotonic()
