"""ACP gateway app factory: the write side (api.md §5)."""

from __future__ import annotations

from aiohttp import web

from services.common.app import base_app
from shared.settings import Settings

DEFAULT_PORT = 8001


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, "gateway")
    from services.gateway import routes

    routes.setup(app)
    return app
