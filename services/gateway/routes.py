"""Route table of the gateway."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Filled in by the gateway modules (jsonrpc endpoint, SSE stream)."""
