"""Listener on this instance's control channel: stop a session's agent on request.

The query service publishes `{"type":"stop","sessionId","reason":"deleted"|"disconnected"}`
after it has written the session's state and events itself, so the agent is stopped
quietly: no event and no status are written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.common.keys import CHANNELS, REDIS, SETTINGS
from services.gateway.keys import SESSION_MANAGER
from services.gateway.sse import close_session_streams
from shared.redisconn import pubsub_of
from shared.retry import Backoff

logger = logging.getLogger(__name__)
# how long cleanup waits for the listener: a stop under way (farewell, agent exit) is
# bounded by its own steps, and a lost cancellation by the 1 s message wait
STOP_WAIT = 15.0


async def handle_control(app: web.Application, message: dict[str, Any]) -> bool:
    """Act on one control message; True when an agent was stopped here."""
    if message.get("type") != "stop":
        return False
    session_id = message.get("sessionId")
    if not isinstance(session_id, str):
        return False
    reason = message.get("reason")
    reason = reason if reason in ("deleted", "disconnected") else "disconnected"
    stopped = await app[SESSION_MANAGER].stop_quiet(session_id, reason)
    if reason == "deleted":
        _ = close_session_streams(app, session_id)
    return stopped


async def _listen(
    app: web.Application, ready: asyncio.Event, stopping: asyncio.Event
) -> None:
    """Subscribe; resubscribe after Redis outages; each message handled in order.

    Ends at its cancellation, or at `stopping` when the cancellation was lost: redis-py's
    read can swallow one, and so can an `asyncio.timeout` that expires in the same
    iteration (Python 3.11) while a stop is under way.
    """
    channel = app[CHANNELS].gateway_control(app[SETTINGS].instance_id)
    backoff = Backoff()
    while not stopping.is_set():
        pubsub = app[REDIS].pubsub()
        try:
            pubsub = await pubsub_of(app[REDIS])
            await pubsub.subscribe(channel)
            ready.set()
            backoff.reset()
            while not stopping.is_set():
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if message is None:
                    continue
                try:
                    body = orjson.loads(message["data"])
                except orjson.JSONDecodeError:
                    logger.warning("ignoring malformed control message")
                    continue
                if isinstance(body, dict):
                    try:
                        await handle_control(app, body)
                    except Exception:
                        logger.exception("control message failed: %s", body)
            with contextlib.suppress(Exception):  # stopping, its cancellation lost
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        except (RedisError, OSError) as err:
            logger.warning("control listener lost Redis: %s", err)
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await backoff.wait()


async def control_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owns the listener task; after the session manager so stops find it alive."""
    ready, stopping = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_listen(app, ready, stopping), name="gateway-control")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await ready.wait()
    yield
    stopping.set()
    task.cancel()
    # bounded: a lost cancellation ends the loop at its next message wait (1 s) instead
    _, pending = await asyncio.wait({task}, timeout=STOP_WAIT)
    if pending:
        logger.error("control listener did not stop within %.0f s", STOP_WAIT)
    elif not task.cancelled() and task.exception() is not None:
        logger.warning("control listener ended with %r", task.exception())
