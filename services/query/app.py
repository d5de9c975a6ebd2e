"""Query service app factory: the read side (api.md §4)."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from shared.settings import Settings

DEFAULT_PORT = 8002


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, "query")
    # Route modules register their own handlers and cleanup contexts.
    from services.query import routes

    routes.setup(app)
    return app
