"""Helpers for the session-method tests: JSON-RPC over POST /api/acp, events from the log."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from shared.db import session_events

WAIT = 20.0  # hang guard only, never a timing assertion
_ids = itertools.count(1)


async def call(
    client: Any, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole JSON-RPC reply object (result or error)."""
    rid = next(_ids)
    resp = await client.post(
        "/api/acp",
        json={"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["id"] == rid
    return body


async def ok(client: Any, method: str, params: dict[str, Any] | None = None) -> Any:
    body = await call(client, method, params)
    assert "error" not in body, body
    return body["result"]


async def err(
    client: Any, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = await call(client, method, params)
    assert "error" in body, body
    return body["error"]


async def events(pool: Any, session_id: str) -> list[dict[str, Any]]:
    stored = await session_events.after(pool, uuid.UUID(session_id), 0)
    return [orjson.loads(e.payload) for e in stored]


def kinds(evs: list[dict[str, Any]]) -> list[str]:
    return [e["update"]["sessionUpdate"] for e in evs]


async def wait_events(
    pool: Any, session_id: str, predicate: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Poll the log until `predicate(events)` holds."""
    async with asyncio.timeout(WAIT):
        while True:
            evs = await events(pool, session_id)
            if predicate(evs):
                return evs
            await asyncio.sleep(0.02)


def has_status(status: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda evs: any(
        e["update"]["sessionUpdate"] == "acp_status"
        and e["update"].get("status") == status
        for e in evs
    )


async def wait_ready(pool: Any, session_id: str) -> list[dict[str, Any]]:
    return await wait_events(
        pool,
        session_id,
        lambda evs: has_status("ready")(evs) or has_status("error")(evs),
    )


async def wait_until(predicate: Callable[[], Any]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.02)
