"""Query service app factory: the read side (api.md §4)."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from services.query import retention, routes
from shared.settings import Settings

DEFAULT_PORT = 8002


def create_app(settings: Settings) -> web.Application:
    """Base resources (Postgres, Redis, health), then every route module's routes and contexts."""
    app = base_app(settings, "query")
    routes.setup(app)
    app.cleanup_ctx.append(retention.retention_ctx)
    return app
