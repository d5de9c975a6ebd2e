"""Helpers of the session route tests: rows, events, clients, SSE and Redis readers."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import orjson

from services.query.app import create_app
from services.query.session_views import consolidate
from shared.db import sessions as sessions_db
from shared.events import record

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def make_session(pool, workspace_id: str, **fields: Any) -> str:
    """Insert a session row (closed, no owner unless given); returns its id."""
    values: dict[str, Any] = {
        "session_id": uuid.uuid4(),
        "workspace_id": workspace_id,
        "cwd": "/tmp/routa-test",
        "provider": "echo",
        "acp_status": "closed",
        "status": "closed",
    }
    values.update(fields)
    new = sessions_db.NewSession(**values)
    async with pool.acquire() as conn:
        await sessions_db.insert(conn, new)
    return str(new.session_id)


async def add_events(pool, session_id: str, updates: list[dict[str, Any]]) -> list[int]:
    """Append `update` objects as events; returns their eventIds."""
    async with pool.acquire() as conn:
        stored = await record(
            conn, uuid.UUID(session_id), [{"update": u} for u in updates]
        )
    return [e.event_id for e in stored]


def chunk(text: str, message_id: str | None = None) -> dict[str, Any]:
    update: dict[str, Any] = {
        "sessionUpdate": "agent_message_chunk",
        "content": {"type": "text", "text": text},
    }
    if message_id is not None:
        update["messageId"] = message_id
    return update


async def session_client(aiohttp_client, make_settings, **overrides):
    return await aiohttp_client(create_app(make_settings(**overrides)))


async def list_json(client, **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/api/sessions", params=params)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["sessions"]


async def names_in(client, workspace_id: str) -> dict[str, str | None]:
    return {
        s["sessionId"]: s.get("name")
        for s in await list_json(client, workspaceId=workspace_id)
    }


class Listener:
    """A Redis pub/sub subscription opened before the action under test."""

    def __init__(self, redis, *channels: str) -> None:
        self._pubsub = redis.pubsub()
        self._channels = channels

    async def __aenter__(self) -> Listener:
        await self._pubsub.subscribe(*self._channels)
        for _ in self._channels:
            async with asyncio.timeout(5):
                while True:
                    msg = await self._pubsub.get_message(timeout=1.0)
                    if msg and msg["type"] == "subscribe":
                        break
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pubsub.aclose()

    async def next(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        """(channel, decoded message) of the next published message."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if msg is not None:
                    return msg["channel"].decode(), orjson.loads(msg["data"])


async def next_data(resp, timeout: float = 5.0) -> dict[str, Any]:
    """The next `data:` frame of an SSE body; fails on id:/event: lines."""
    async with asyncio.timeout(timeout):
        while True:
            raw = await resp.content.readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\r\n")
            assert not line.startswith(("id:", "event:")), line
            if line.startswith("data: "):
                return orjson.loads(line[len("data: ") :])


async def wait_for(predicate, *, timeout: float = 10.0, interval: float = 0.05):
    """Poll an async predicate until it returns a truthy value (a condition, not a delay)."""
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(interval)


def searchable_texts(updates: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(eventId, text) of the documents search must hold for these updates stored as events
    1..n: the prompts and agent messages consolidated history gives."""
    history = [{"eventId": str(i + 1), "update": u} for i, u in enumerate(updates)]
    return [
        (int(e["eventId"]), e["update"]["content"]["text"])
        for e in consolidate(history)
        if e["update"]["sessionUpdate"] in ("agent_message", "user_message")
    ]
