"""Share-link revocations between processes: one Redis channel, heard by every process.

The process that revokes a share publishes `{"type":"share:revoked","shareId","sessionId","at"}`
on `share_revocations`. Every process (both services, every instance) drops the share from
its token cache and calls its hooks: the gateway ends the event streams opened with that
token. Pub/sub is at-most-once, so after every (re)subscription the cache is emptied and the
resync hooks ask the table which open streams' shares still exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.common.keys import AUTH, CHANNELS, REDIS, REVOCATIONS, SETTINGS
from shared.jsonutil import dumps, now_iso
from shared.redisconn import Redis, create_subscriber, pubsub_of
from shared.retry import Backoff

logger = logging.getLogger(__name__)

POLL = (
    1.0  # seconds a read waits for a message before looping (no blocking socket reads)
)
PUBLISH_TIMEOUT = 1.0


def revoked(app: web.Application, share_id: str) -> None:
    """This process forgets the share and ends what was opened with it."""
    state = app.get(AUTH)
    if state is not None:
        state.store.forget_share(share_id)
    for hook in app[REVOCATIONS].on_revoked:
        try:
            hook(share_id)
        except Exception:  # one hook failing must not keep the others from running
            logger.exception("share revocation hook failed")


async def publish_revocation(
    app: web.Application, share_id: str, session_id: str
) -> None:
    """Tell every process; a lost message is caught by their resync after Redis returns."""
    revoked(app, share_id)
    message = dumps(
        {
            "type": "share:revoked",
            "shareId": share_id,
            "sessionId": session_id,
            "at": now_iso(),
        }
    )
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            await app[REDIS].publish(app[CHANNELS].share_revocations, message)
    except (RedisError, OSError, TimeoutError) as err:
        logger.warning("revocation of share %s not published: %r", share_id, err)


async def _resync(app: web.Application) -> None:
    state = app.get(AUTH)
    if state is not None:
        state.store.forget_all_shares()
    for hook in app[REVOCATIONS].on_resync:
        try:
            await hook()
        except Exception:  # Postgres down: the next resync or the cache TTL covers it
            logger.exception("share resync hook failed")


def _on_message(app: web.Application, data: Any) -> None:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(body, dict) and body.get("type") == "share:revoked":
        share_id = body.get("shareId")
        if isinstance(share_id, str):
            revoked(app, share_id)


async def _listen(app: web.Application, client: Redis) -> None:
    rev = app[REVOCATIONS]
    pubsub = await pubsub_of(client)
    try:
        await pubsub.subscribe(app[CHANNELS].share_revocations)
        while not rev.stopping:
            message = await pubsub.get_message(timeout=POLL)
            if message is None:
                continue
            if message["type"] == "subscribe":
                rev.subscriptions += 1
                rev.listening.set()
                await _resync(app)
            elif message["type"] == "message":
                _on_message(app, message["data"])
    finally:
        rev.listening.clear()
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _run(app: web.Application, client: Redis) -> None:
    rev = app[REVOCATIONS]
    logged_at = -1  # the subscription count when the last outage was logged
    backoff = Backoff()
    while not rev.stopping:
        heard = rev.subscriptions
        try:
            await _listen(app, client)
        except (RedisError, OSError) as err:
            if logged_at != rev.subscriptions:  # once per outage, not per retry
                logger.warning("share revocations: Redis lost (%r); retrying", err)
                logged_at = rev.subscriptions
        except Exception:  # a bug must not end revocations for the process
            logger.exception("share revocation listener failed; restarting")
        if rev.subscriptions != heard:
            backoff.reset()  # it was subscribed: a new outage starts from the base delay
        await backoff.wait()


async def revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    """After Redis and auth: its own connection, without hidden retries (it resyncs itself)."""
    client = create_subscriber(
        app[SETTINGS].redis_url,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        max_connections=2,
    )
    task = asyncio.create_task(_run(app, client), name="share-revocations")
    yield
    app[REVOCATIONS].stopping = True
    task.cancel()
    # ends within POLL even when the cancellation was swallowed (see `stopping`)
    await asyncio.wait({task}, timeout=POLL * 5)
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.warning("share revocation listener ended with %r", task.exception())
    await client.aclose()
