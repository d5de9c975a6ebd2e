"""lastActivity and the cached session lists: a session's event writer drops its
workspace's lists at most once a second after storing events, but not while a turn runs
(the query service caches such lists for at most a second anyway). Real echo agents,
Postgres, Redis and a query service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from services.gateway.keys import SESSION_MANAGER
from services.query.app import create_app as create_query
from shared.channels import Channels
from shared.redisconn import Redis
from tests.gateway.conftest import new_ready_session
from tests.gateway.rpcutil import call, ok

WAIT = 60.0  # hang guard only, never a timing assertion
# one chunk every 100 ms for this long: several ACTIVITY_INTERVALs of streaming
SLOW_TURN = "/slow 4"

# what the observer records: an invalidation of the workspace's lists ("I"), or the
# `changes` of a lifecycle message of the workspace
Seen = str | dict[str, Any]


class Observer:
    """The workspace's list invalidations and lifecycle messages, in the order Redis sent
    them to one subscriber.

    An announced state change is one MULTI: its invalidation, then its lifecycle message,
    with nothing between. An invalidation not followed by a lifecycle message is the event
    writer's own (lastActivity).
    """

    def __init__(self, redis: Redis, channels: Channels, workspace_id: str) -> None:
        self.seen: list[Seen] = []
        self._invalidation = channels.cache_sessions_invalidation(workspace_id)
        self._pubsub = redis.pubsub()
        self._channels = (
            channels.cache_invalidations,
            channels.workspace_sessions(workspace_id),
        )
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Observer:
        await self._pubsub.subscribe(*self._channels)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._pubsub.aclose()

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] != "message":
                continue
            channel = message["channel"].decode()
            if channel == self._channels[0]:
                if message["data"] != self._invalidation:
                    continue  # another workspace's
                self.seen.append("I")
            else:
                self.seen.append(orjson.loads(message["data"])["changes"])
            self._changed.set()

    async def wait_for(self, predicate: Callable[[list[Seen]], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate(self.seen):
                self._changed.clear()
                await self._changed.wait()


def status_change(status: str) -> Callable[[Seen], bool]:
    return lambda s: isinstance(s, dict) and s.get("status") == status


def writer_invalidations(seen: list[Seen]) -> int:
    """Invalidations that no lifecycle message follows: the event writer's own."""
    return sum(
        1
        for i, s in enumerate(seen)
        if s == "I" and (i + 1 == len(seen) or not isinstance(seen[i + 1], dict))
    )


def turn_window(seen: list[Seen]) -> list[Seen]:
    """From the announced start of the (first) turn to its announced end, both included."""
    start = next(i for i, s in enumerate(seen) if status_change("active")(s))
    end = next(i for i, s in enumerate(seen) if i > start and status_change("idle")(s))
    return seen[start : end + 1]


def has_turn(seen: list[Seen]) -> bool:
    try:
        turn_window(seen)
    except StopIteration:
        return False
    return True


@pytest.fixture
async def gw(new_gw: Callable[..., Any]) -> Any:
    # a lease far longer than the test: only the turn's 1 s bound can end a cached list
    return await new_gw(lease_ttl=600.0)


async def test_a_streaming_turn_does_not_invalidate_for_last_activity(
    gw, pool, redis, channels, workspace_id
):
    """Between a turn's announced start and end only the announcements invalidate, plus
    at most one of the writer's own: when it stores the turn's end (which leaves
    `active`). Before, a writer invalidated about once a second of streaming."""
    sid = await new_ready_session(gw, pool, workspace_id)
    async with Observer(redis, channels, workspace_id) as observer:
        reply = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": SLOW_TURN})
        assert reply["stopReason"] == "end_turn"
        await observer.wait_for(has_turn)
    turn = turn_window(observer.seen)
    assert writer_invalidations(turn) <= 1, turn


async def test_an_event_outside_a_turn_still_invalidates(
    gw, pool, redis, channels, workspace_id
):
    """After a turn (its end stored: status idle), an event such as an idle agent's
    stderr line moves lastActivity, and the writer invalidates the lists for it."""
    sid = await new_ready_session(gw, pool, workspace_id)
    # a turn longer than a second: its end's invalidation is done when it answers
    reply = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "/slow 1.5"})
    assert reply["stopReason"] == "end_turn"
    live = gw.app[SESSION_MANAGER].live[sid]
    async with Observer(redis, channels, workspace_id) as observer:
        live.on_stderr("echo: a line after the turn")  # as the agent's stderr reader
        await observer.wait_for(lambda seen: writer_invalidations(seen) >= 1)
    assert not any(isinstance(s, dict) for s in observer.seen), observer.seen


async def _listed(query: Any, workspace_id: str, sid: str) -> dict[str, Any]:
    resp = await query.get("/api/sessions", params={"workspaceId": workspace_id})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return next(s for s in body["sessions"] if s["sessionId"] == sid)


async def _wait_listed(
    query: Any, workspace_id: str, sid: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Read the list (mostly from the cache) until the session's entry satisfies it."""
    async with asyncio.timeout(WAIT):
        while True:
            entry = await _listed(query, workspace_id, sid)
            if predicate(entry):
                return entry
            await asyncio.sleep(0.05)


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["lastActivity"])


async def test_a_cached_list_shows_last_activity_move_during_a_turn(
    gw, aiohttp_client, settings, pool, workspace_id
):
    """The lists' lastActivity lags by about a second during a turn, without the
    writer's invalidations: a list read while the turn streams shows a later lastActivity
    than the one read at its start (the 1 s freshness bound of lists with a turn)."""
    query = await aiohttp_client(create_query(settings))
    sid = await new_ready_session(gw, pool, workspace_id)
    running = asyncio.create_task(
        call(gw, "session/prompt", {"sessionId": sid, "prompt": "/slow 60"})
    )
    try:
        started = await _wait_listed(
            query, workspace_id, sid, lambda s: s["status"] == "active"
        )
        moved = await _wait_listed(
            query,
            workspace_id,
            sid,
            lambda s: s["status"] == "active" and _at(s) > _at(started),
        )
        assert not running.done()  # still the same turn
    finally:
        await ok(gw, "session/cancel", {"sessionId": sid})
        reply = await running
    assert reply["result"]["stopReason"] == "cancelled", reply
    assert _at(moved) > _at(started)
