"""Query service app factory: the read side."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from services.query import routes
from shared.settings import Settings

DEFAULT_PORT = 8002


def create_app(settings: Settings) -> web.Application:
    """Base resources (Postgres, Redis, health), then every route module's routes and contexts."""
    app = base_app(settings, "query")
    routes.setup(app)
    return app
