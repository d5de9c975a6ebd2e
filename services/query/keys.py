"""Typed AppKeys of the query service, set by create_app (app.py): all of them."""

from __future__ import annotations

from aiohttp import web

from services.query.listcache import ListCache
from services.query.webhook_delivery import DeliveryWorker
from services.query.webhook_targets import AllowList
from shared.db.search import CursorKey

# The OpenAPI document, serialised once at start-up (openapi.py serves it).
OPENAPI_BODY = web.AppKey("openapi_body", bytes)
# The dashboard's index.html, read once: the share page is it in read-only mode.
SHARE_PAGE_HTML = web.AppKey("share_page", str)
# The session list cache (Redis, with the in-process L1) and its invalidations.
LIST_CACHE = web.AppKey("session_list_cache", ListCache)
# The webhook delivery worker, and the targets it may call (WEBHOOK_ALLOW).
WORKER = web.AppKey("webhook_worker", DeliveryWorker)
ALLOW = web.AppKey("webhook_allow", AllowList)
# The receiver timeout of one delivery; tests shorten it before start-up.
TIMEOUT_KEY = web.AppKey("webhook_delivery_timeout", float)
# The signing key of search cursors, read from the database on first use.
CURSOR_KEY = web.AppKey("search_cursor_key", CursorKey)
