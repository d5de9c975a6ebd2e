"""Route table of the query service: each module adds its own routes and contexts."""

from __future__ import annotations

from aiohttp import web

from services.query import (
    dashboard,
    export,
    notes,
    openapi,
    search,
    sessions,
    shares,
    tasks,
    webhooks,
    workspaces,
)


def setup(app: web.Application) -> None:
    """Sessions first: it registers /api/sessions/events before /api/sessions/{id}."""
    sessions.setup(app)
    shares.setup(app)
    export.setup(app)
    search.setup(app)
    notes.setup(app)
    tasks.setup(app)
    workspaces.setup(app)
    webhooks.setup(app)
    dashboard.setup(app)
    openapi.setup(app)
