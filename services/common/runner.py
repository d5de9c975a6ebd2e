"""Running an app factory as a process: logging, uvloop, the port, a short shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from services.common.accesslog import ACCESS_LOGGER, AccessLogger
from services.common.logging import configure_logging
from shared.settings import Settings

MAX_LINE_SIZE = 64 * 1024


def run(
    factory: Callable[[Settings], web.Application], default_port: int, name: str
) -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    port = settings.port_or(default_port)
    logging.getLogger(name).info(
        "starting %s instance=%s on %s:%s",
        name,
        settings.instance_id,
        settings.host,
        port,
    )
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - windows
        loop = None
    web.run_app(
        factory(settings),
        host=settings.host,
        port=port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=ACCESS_LOGGER,
        access_log_class=AccessLogger,
        print=None,
        loop=loop,
        # Long ids in a URL must reach our handlers (and get a JSON 404/400), not
        # aiohttp's plain-text 400 for an 8 KiB request line.
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_LINE_SIZE,
    )
