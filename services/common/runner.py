"""Running an app factory as a process: flags, logging, uvloop, the port, the drain.

What `web.run_app` does, with two differences. Between setting the runner up and serving,
the server's connections learn to answer the HTTP parser's 400s as JSON (badrequest.py). And on SIGTERM / SIGINT the app's on_shutdown hooks (readiness turns 503,
a gateway's running turns finish) run while the listener is still open: probes and the
balancer get a 503 rather than a refused connection until the drain is over; only then
are the listener and the connections closed. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from services.common.accesslog import ACCESS_LOGGER, AccessLogger
from services.common.badrequest import shape_parse_errors
from services.common.http import dependency_of
from services.common.logging import configure_logging
from shared.cli import SERVICE_FLAGS, overrides, service_parser
from shared.settings import Settings, load_settings

MAX_LINE_SIZE = 64 * 1024
KEEPALIVE_TIMEOUT = 75.0  # run_app's default


class _Runner(web.AppRunner):
    """on_shutdown runs once: from `serve` before the listener closes, not again in cleanup."""

    _shut_down = False

    async def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            await super().shutdown()


async def serve(
    app: web.Application,
    settings: Settings,
    port: int,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or cancelled); drain with the listener open; clean up."""
    runner = _Runner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=ACCESS_LOGGER,
        access_log_class=AccessLogger,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        # A client that hangs up cancels its handler (aiohttp's test server does the same,
        # so most tests run this way): a call forwarded to the agent is then withdrawn
        # with $/cancel_request, a stream stops at once. A prompt's turn goes on (it is
        # shielded in LiveSession), and database writes are transactions.
        handler_cancellation=True,
        # Long ids in a URL must reach our handlers (and get a JSON 404/400), not
        # aiohttp's 400 for an 8 KiB request line.
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_LINE_SIZE,
    )
    await runner.setup()
    # Everything made while starting (modules, pydantic schemas, the app) lives as long as
    # the process: out of the collector's sight, a full collection walks only what serving
    # made (in a fan-out to 1,000 streams they took 50-100 ms and set the p99).
    gc.freeze()
    try:
        assert runner.server is not None
        shape_parse_errors(runner.server)
        await web.TCPSite(runner, settings.host, port).start()
        await (stop or asyncio.Event()).wait()
        # the drain (on_shutdown) while /readyz still answers, with 503
        await runner.shutdown()
    finally:
        await runner.cleanup()


def run(
    factory: Callable[[Settings], web.Application],
    default_port: int,
    name: str,
    description: str = "",
    argv: Sequence[str] | None = None,
) -> None:
    program = f"routa-{name}"
    args = service_parser(program, description, default_port).parse_args(argv)
    settings = load_settings(program, overrides(args, *SERVICE_FLAGS))
    configure_logging(settings.log_level, settings.log_format)
    port = settings.port_or(default_port)
    log = logging.getLogger(name)
    log.info(
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
    stop = asyncio.Event()
    main = loop.create_task(serve(factory(settings), settings, port, stop))

    def on_signal(signame: str) -> None:
        if not stop.is_set():
            log.info("%s: draining, then stopping", signame)
            stop.set()
        else:
            log.warning("%s again: stopping without waiting for the drain", signame)
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    failed: str | None = None
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt, asyncio.CancelledError):
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
