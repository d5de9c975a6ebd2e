"""Typed AppKeys of the query service, set by create_app (app.py).

Keys whose value type lives in a module that reads the key itself (the hubs, the list
cache, the webhook worker, the search cursor key) are still defined beside that type;
they move here once their type sits in a module of its own.
"""

from __future__ import annotations

from aiohttp import web

# The OpenAPI document, serialised once at start-up (openapi.py serves it).
OPENAPI_BODY = web.AppKey("openapi_body", bytes)
# The dashboard's index.html, read once: the share page is it in read-only mode.
SHARE_PAGE_HTML = web.AppKey("share_page", str)
