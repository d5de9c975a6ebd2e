"""Browser test harness: a real gateway and query service behind one origin, and headless chromium.

Chromium is Debian's (`apt-get install chromium`), driven by Python playwright without its own
browser download; when either is missing the browser tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from services.devtools.origin import create_origin_app
from services.devtools.upstreams import Backend, Upstreams
from services.gateway.app import create_app as create_gateway_app
from services.query.app import create_app as create_query_app
from shared.settings import Settings

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"


def chromium_path() -> str | None:
    """CHROMIUM_PATH, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "browser tests need chromium: apt-get install -y chromium (or set CHROMIUM_PATH)"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need playwright: pip install 'playwright>=1.50'")
    return path


@pytest.fixture
async def browser(chromium_executable: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass(frozen=True)
class Stack:
    origin: str  # http://127.0.0.1:<port>, what the browser opens
    gateway: str
    query: str


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    """Run `app` on a free port (the socket is bound here, so no port race) and give its URL."""
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    runners.append(runner)
    sock = _listening_socket()
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def stack(
    make_settings: Callable[..., Settings], cwd_root: Path
) -> AsyncIterator[Stack]:
    async with live_stack(make_settings) as running:
        yield running


@asynccontextmanager
async def live_stack(make_settings: Callable[..., Settings]) -> AsyncIterator[Stack]:
    """Gateway + query service (same Postgres, Redis prefix and data dir) + the dev origin."""
    runners: list[web.AppRunner] = []
    try:
        gateway = await _serve(create_gateway_app(make_settings()), runners)
        query = await _serve(create_query_app(make_settings()), runners)
        upstreams = Upstreams(
            gateway=Backend("gateway", URL(gateway)), query=Backend("query", URL(query))
        )
        origin = await _serve(create_origin_app(upstreams), runners)
        yield Stack(origin=origin, gateway=gateway, query=query)
    finally:
        # origin first (it holds streams open to both), then the services
        for runner in reversed(runners):
            await runner.cleanup()
