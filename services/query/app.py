"""Query service app factory: the read side.

Everything the process starts, stops and serves is listed here, in order: the cleanup
contexts (started in this order, stopped in reverse), the shutdown hooks, the routes
table (routes.py) and the keys the handlers read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from services.common.app import base_app
from services.common.auth import auth_ctx
from services.common.health import mark_draining
from services.common.keys import CHANNELS, METRICS, PG_POOL, REDIS, SETTINGS
from services.common.resources import postgres_ctx, redis_ctx
from services.common.shares import revocations_ctx
from services.query import live, openapi, retention, routes
from services.query.dashboard import STATIC_DIR
from services.query.keys import (
    ALLOW,
    CURSOR_KEY,
    LIST_CACHE,
    OPENAPI_BODY,
    SHARE_PAGE_HTML,
    TIMEOUT_KEY,
    WORKER,
)
from services.query.listcache import ListCache
from services.query.webhook_delivery import DELIVERY_TIMEOUT, DeliveryWorker
from services.query.webhook_targets import AllowList
from shared.db.search import CursorKey
from shared.settings import Settings

DEFAULT_PORT = 8002


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, "query")
    # a bad WEBHOOK_ALLOW stops the start here
    app[ALLOW] = AllowList.parse(app[SETTINGS].webhook_allow)
    app[TIMEOUT_KEY] = DELIVERY_TIMEOUT
    app[CURSOR_KEY] = CursorKey()
    app[SHARE_PAGE_HTML] = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            redis_ctx,
            auth_ctx,  # after Postgres: it reads api_tokens
            revocations_ctx,  # after auth: it drops revoked shares from its cache
            list_cache_ctx,  # after Redis: the session list cache wraps its client
            live.hub_ctx,  # one hub: /api/sessions/events, /api/notes/events, /api/tasks/events
            worker_ctx,  # webhook deliveries, after Postgres
            retention.retention_ctx,  # EVENT_RETENTION_DAYS sweeps, after Postgres
        ]
    )
    app.on_shutdown.extend(
        [
            mark_draining,  # first: /readyz answers 503
            live.end_streams,  # then a sentinel ends every open stream
        ]
    )
    app.add_routes(routes.ROUTES)
    # pydantic's schema generation is not free: once per app
    app[OPENAPI_BODY] = orjson.dumps(openapi.build_document(routes.ROUTES))
    return app


async def list_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the Redis context: the cache wraps its client and owns the retry task."""
    app[LIST_CACHE] = list_cache = ListCache(
        app[REDIS], app[CHANNELS], app[SETTINGS].redis_url
    )
    if METRICS in app:
        list_cache.on_lookup = app[METRICS].cache_lookup
    tasks = [
        asyncio.create_task(list_cache.run_retries(), name="list-cache-retries"),
        asyncio.create_task(
            list_cache.run_invalidations(), name="list-cache-invalidations"
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The worker runs for the app's life and is cancelled (claims handed back) on exit."""
    settings = app[SETTINGS]
    worker = DeliveryWorker(
        app[PG_POOL],
        app[ALLOW],
        poll_interval=settings.webhook_poll_interval,
        timeout=app[TIMEOUT_KEY],
    )
    app[WORKER] = worker
    task = asyncio.create_task(worker.run(), name="webhook-deliveries")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
