"""Query service app factory: the read side (api.md §4).

Everything the process starts, stops and serves is listed here, in order: the cleanup
contexts (started in this order, stopped in reverse), the shutdown hooks, the routes
table (routes.py) and the keys the handlers read.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from services.common.app import base_app
from services.common.auth import auth_ctx
from services.common.health import mark_draining
from services.common.keys import SETTINGS
from services.common.resources import postgres_ctx, redis_ctx
from services.common.shares import revocations_ctx
from services.query import lifecycle_sse, live, openapi, routes, search
from services.query.dashboard import STATIC_DIR
from services.query.keys import OPENAPI_BODY, SHARE_PAGE_HTML
from services.query.listcache import list_cache_ctx
from services.query.webhook_delivery import ALLOW, worker_ctx
from services.query.webhook_targets import AllowList
from shared.settings import Settings

DEFAULT_PORT = 8002


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, "query")
    # a bad WEBHOOK_ALLOW stops the start here
    app[ALLOW] = AllowList.parse(app[SETTINGS].webhook_allow)
    app[live.HEARTBEAT] = live.DEFAULT_HEARTBEAT
    app[lifecycle_sse.LIFECYCLE_HEARTBEAT] = lifecycle_sse.HEARTBEAT_SECONDS
    app[search.CURSOR_KEY] = search.CursorKey()
    app[SHARE_PAGE_HTML] = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            redis_ctx,
            auth_ctx,  # after Postgres: it reads api_tokens
            revocations_ctx,  # after auth: it drops revoked shares from its cache
            list_cache_ctx,  # after Redis: the session list cache wraps its client
            lifecycle_sse.lifecycle_hub_ctx,  # /api/sessions/events
            live.live_ctx,  # /api/notes/events and /api/tasks/events
            worker_ctx,  # webhook deliveries, after Postgres
        ]
    )
    app.on_shutdown.extend(
        [
            mark_draining,  # first: /readyz answers 503
            lifecycle_sse.end_streams,  # then a sentinel ends every open stream
            live.end_streams,
        ]
    )
    app.add_routes(routes.ROUTES)
    # pydantic's schema generation is not free: once per app
    app[OPENAPI_BODY] = orjson.dumps(openapi.build_document(routes.ROUTES))
    return app
