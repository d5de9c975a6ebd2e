"""The live dashboard: `/` and its static assets, served by the query service.

Plain files, no build step and nothing fetched from the internet; `no-cache` so an edited asset
is picked up on the next load (the browser revalidates with the ETag aiohttp sends).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.common.apidoc import api, undocumented
from services.common.http import error_response

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Only these extensions are served; anything else under static/ is not an asset.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _file_response(path: Path) -> web.FileResponse:
    headers = {**ASSET_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}
    return web.FileResponse(path, headers=headers)


def resolve_asset(static_dir: Path, name: str) -> Path | None:
    """The file `name` names inside `static_dir`, or None (traversal, hidden, unknown type, missing)."""
    if not name or name.startswith(".") or "\\" in name or "\x00" in name:
        return None
    candidate = (static_dir / name).resolve()
    if (
        not candidate.is_relative_to(static_dir)
        or candidate.suffix not in CONTENT_TYPES
    ):
        return None
    if any(part.startswith(".") for part in candidate.relative_to(static_dir).parts):
        return None
    return candidate if candidate.is_file() else None


@api("The live dashboard", "meta", "text/html")
async def index(request: web.Request) -> web.StreamResponse:
    return _file_response(STATIC_DIR / "index.html")


@undocumented
async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["path"]
    path = resolve_asset(STATIC_DIR, name)
    if path is None:
        return error_response(404, f"Unknown asset: {name}")
    return _file_response(path)
