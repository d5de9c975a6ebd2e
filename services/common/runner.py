"""Running an app factory as a process: logging, uvloop, the port, a short shutdown.

What `web.run_app` does, with one step between setting the runner up and serving: the
server's request factory learns to answer the HTTP parser's 400s as JSON (badrequest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable

from aiohttp import web

from services.common.accesslog import ACCESS_LOGGER, AccessLogger
from services.common.badrequest import shape_parse_errors
from services.common.http import dependency_of
from services.common.logging import configure_logging
from shared.settings import Settings, load_settings

MAX_LINE_SIZE = 64 * 1024
KEEPALIVE_TIMEOUT = 75.0  # run_app's default


async def serve(app: web.Application, settings: Settings, port: int) -> None:
    """Serve until cancelled or SIGINT/SIGTERM (GracefulExit), then clean up."""
    runner = web.AppRunner(
        app,
        handle_signals=True,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=ACCESS_LOGGER,
        access_log_class=AccessLogger,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        # Long ids in a URL must reach our handlers (and get a JSON 404/400), not
        # aiohttp's 400 for an 8 KiB request line.
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_LINE_SIZE,
    )
    await runner.setup()
    try:
        assert runner.server is not None
        shape_parse_errors(runner.server)
        await web.TCPSite(runner, settings.host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(
    factory: Callable[[Settings], web.Application], default_port: int, name: str
) -> None:
    settings = load_settings(f"routa-{name}")
    configure_logging(settings.log_level, settings.log_format)
    port = settings.port_or(default_port)
    logging.getLogger(name).info(
        "starting %s instance=%s on %s:%s",
        name,
        settings.instance_id,
        settings.host,
        port,
    )
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - windows
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve(factory(settings), settings, port))
    failed: str | None = None
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    except Exception as err:
        # Postgres or Redis still down after the start-up retries: one line naming the
        # variable, not a traceback through aiohttp's start-up
        dependency = dependency_of(err)
        if dependency is None:
            raise
        variable = "DATABASE_URL" if dependency == "Postgres" else "REDIS_URL"
        detail = str(err).strip()
        failed = f"{variable}: {dependency} does not answer ({err.__class__.__name__}"
        failed += f": {detail})" if detail else ")"
    finally:
        # as run_app: finish the cleanup, then whatever tasks are left
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if failed is not None:
        sys.stderr.write(f"routa-{name}: {failed}\n")
        raise SystemExit(1)
