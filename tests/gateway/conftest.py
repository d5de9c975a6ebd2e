"""Gateway test helpers: the app on a test client, sessions in the log, an SSE frame reader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web

from services.common.hub import StreamConfig
from services.common.keys import HUB, STREAM_CONFIG
from services.gateway.app import create_app
from services.gateway.keys import GATEWAY_LINK
from shared.db import sessions
from shared.events import gateway_update, record
from shared.settings import Settings
from tests.gateway.rpcutil import ok, wait_ready, wait_until


@pytest.fixture
def make_gateway(settings: Settings) -> Callable[..., web.Application]:
    """A gateway app; keyword overrides go into its StreamConfig (heartbeat, queue size)."""

    def _make(**stream: Any) -> web.Application:
        app = create_app(settings)
        app[STREAM_CONFIG] = StreamConfig(**stream)
        return app

    return _make


@pytest.fixture
async def gateway(make_gateway, aiohttp_client):
    """A test client on a gateway whose fan-out is subscribed to Redis."""
    client = await aiohttp_client(make_gateway())
    await wait_fanout_ready(client.app)
    return client


async def wait_fanout_ready(app: web.Application) -> None:
    async with asyncio.timeout(10):
        await app[HUB].connected.wait()


@pytest.fixture
def new_gw(
    make_settings: Callable[..., Settings], aiohttp_client: Any, cwd_root: Any
) -> Callable[..., Awaitable[Any]]:
    """One more gateway instance on the shared Postgres/Redis, as a test client.

    Its INSTANCE_ID is `name` plus a random suffix; keyword overrides take the Settings
    field names. Returned once its gateway link listens, so calls can be forwarded to it.
    """

    async def _make(name: str = "gw", **overrides: Any) -> Any:
        settings = make_settings(
            instance_id=f"{name}-{uuid.uuid4().hex[:6]}", **overrides
        )
        client = await aiohttp_client(create_app(settings))
        await wait_until(lambda: client.app[GATEWAY_LINK].subscribed)
        return client

    return _make


async def new_ready_session(client: Any, pool: Any, workspace_id: str) -> str:
    """session/new (an echo agent) on `client`; its id once the agent is ready."""
    sid = str(
        (await ok(client, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    )
    await wait_ready(pool, sid)
    return sid


@pytest.fixture
def new_session(pool, workspace_id) -> Callable[..., Awaitable[str]]:
    """Insert a session row directly (no agent); returns its id. Keyword arguments take
    NewSession's fields (an owner, a lease, a status)."""

    async def _new(**fields: Any) -> str:
        sid = uuid.uuid4()
        async with pool.acquire() as conn:
            await sessions.insert(
                conn,
                sessions.NewSession(
                    session_id=sid,
                    workspace_id=workspace_id,
                    cwd="/tmp",
                    provider="echo",
                    **fields,
                ),
            )
        return str(sid)

    return _new


@pytest.fixture
def append(pool, redis, channels) -> Callable[..., Awaitable[list[int]]]:
    """Store then publish events as production does (shared.events.record); their eventIds."""

    async def _append(session_id: str, *updates: dict[str, Any]) -> list[int]:
        stored = await record(
            pool, uuid.UUID(session_id), list(updates), redis=redis, channels=channels
        )
        return [e.event_id for e in stored]

    return _append


def chunk(text: str) -> dict[str, Any]:
    return gateway_update("agent_message_chunk", content={"type": "text", "text": text})


def user_message(text: str) -> dict[str, Any]:
    return gateway_update("user_message", content={"type": "text", "text": text})


@dataclass
class Frame:
    id: str | None
    data: Any
    comments: list[str]
    raw: bytes

    @property
    def is_event(self) -> bool:
        return self.id is not None


class SseReader:
    """Reads `text/event-stream` frames off an aiohttp client response."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp

    async def frame(self) -> Frame | None:
        """The next frame (a heartbeat is a frame of comments only); None at the end."""
        fields: dict[str, str] = {}
        comments: list[str] = []
        raw = b""
        while True:
            line = await self.resp.content.readline()
            if not line:
                return None
            raw += line
            text = line.decode().rstrip("\n")
            if text == "":
                if fields or comments:
                    data = orjson.loads(fields["data"]) if "data" in fields else None
                    return Frame(fields.get("id"), data, comments, raw)
                continue
            if text.startswith(":"):
                comments.append(text[1:].strip())
                continue
            key, _, value = text.partition(":")
            assert key not in fields, f"repeated field {key} in one frame"
            fields[key] = value[1:] if value.startswith(" ") else value

    async def events(self, n: int) -> list[Frame]:
        """The next n frames carrying an id (heartbeats and the connected frame skipped)."""
        out: list[Frame] = []
        while len(out) < n:
            frame = await self.frame()
            assert frame is not None, f"stream ended after {len(out)} of {n} events"
            if frame.is_event:
                out.append(frame)
        return out

    async def until_connected(self) -> list[Frame]:
        """Replayed event frames, up to and without the connected frame."""
        out: list[Frame] = []
        while True:
            frame = await self.frame()
            assert frame is not None, "stream ended before the connected frame"
            if frame.is_event:
                out.append(frame)
            elif frame.data is not None:
                assert frame.data["params"]["update"]["sessionUpdate"] == "acp_status"
                return out
