"""Route table of the query service: each module adds its own routes."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Filled in by the query service modules (sessions, notes, tasks, workspaces)."""
