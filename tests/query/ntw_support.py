"""Helpers shared by the notes, tasks and workspaces tests: app clients and SSE reading."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from services.common.hub import StreamConfig
from services.common.keys import STREAM_CONFIG
from services.query.app import create_app


async def query_client(
    aiohttp_client, make_settings, *, heartbeat: float | None = None, **overrides
):
    """A real query app (Postgres + Redis) behind a test client."""
    app = create_app(make_settings(**overrides))
    if heartbeat is not None:
        app[STREAM_CONFIG] = StreamConfig(heartbeat_interval=heartbeat)
    return await aiohttp_client(app)


async def next_line(resp, timeout: float = 5.0) -> str:
    async with asyncio.timeout(timeout):
        line = await resp.content.readline()
    if not line:
        raise EOFError("stream ended")
    return line.decode().rstrip("\r\n")


async def next_data(resp, timeout: float = 5.0) -> dict[str, Any]:
    """The next `data:` frame, skipping heartbeats and blank lines; fails on id:/event: lines."""
    async with asyncio.timeout(timeout):
        while True:
            line = await next_line(resp, timeout)
            assert not line.startswith(("id:", "event:")), line
            if line.startswith("data: "):
                return orjson.loads(line[len("data: ") :])


async def wait_for(predicate, timeout: float = 5.0) -> None:
    """Wait on a condition without sleeping for synchronisation (polls the event loop)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
