"""ACP gateway app factory: the write side."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from services.common.app import base_app
from services.common.auth import auth_ctx
from services.common.health import mark_draining
from services.common.hub import StreamConfig
from services.common.keys import CHANNELS, HEALTH, REDIS, SETTINGS, STREAM_CONFIG
from services.common.resources import postgres_ctx, redis_ctx
from services.common.shares import revocations_ctx
from services.gateway import (
    control,
    jsonrpc,
    methods,
    openapi,
    openrpc,
    routes,
)
from services.gateway.commands import CommandConsumer
from services.gateway.confine import agent_user, warn_if_root
from services.gateway.keys import (
    COMMAND_CONSUMER,
    GATEWAY_LINK,
    METHODS,
    OPENAPI_BODY,
    OPENRPC_BODY,
    SESSION_MANAGER,
)
from services.gateway.link import GatewayLink
from services.gateway.mcp import McpPolicy
from services.gateway.sse import (
    close_streams_on_shutdown,
    end_streams_of_revoked_shares,
    fanout_ctx,
)
from shared.settings import Settings

DEFAULT_PORT = 8001
_log = structlog.stdlib.get_logger("routa.drain")

# What the drain may take beyond DRAIN_GRACE: the idle sessions' stops and the last
# turns' ends (each step of a stop is bounded; this bounds their sum).
DRAIN_MARGIN = 20.0
# Stacks of the tasks a drain that overran was waiting on, at most this many.
STUCK_TASKS_SHOWN = 50


def create_app(settings: Settings) -> web.Application:
    """Everything the gateway starts, stops and serves, in order."""
    preflight(settings)
    app = base_app(settings, "gateway")
    app[METHODS] = methods.registry()
    app[STREAM_CONFIG] = StreamConfig()  # tests replace it before the app starts
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            redis_ctx,
            auth_ctx,  # after Postgres: it reads api_tokens
            revocations_ctx,  # after auth: it drops revoked shares from its cache
            fanout_ctx,  # the event fan-out to SSE streams, after Redis
            methods.manager_ctx,  # the session manager; stops every agent on exit
            control.control_ctx,  # stop/delete requests from the query service
            # forwarding between gateways and the commands stream: they dispatch into
            # the session manager, so they start after it and stop before it
            link_ctx,
            commands_ctx,
        ]
    )
    app.on_shutdown.extend(
        [
            mark_draining,  # first: /readyz answers 503
            # then running turns finish, so SSE subscribers here see them through...
            drain,
            # ...and only then a sentinel ends every stream (clients reconnect elsewhere)
            close_streams_on_shutdown,
        ]
    )
    app.on_response_prepare.append(tag_instance)
    end_streams_of_revoked_shares(app)
    app[HEALTH].checks["gatewayLink"] = _link_subscribed(app)
    app.add_routes(routes.ROUTES)
    # built once per app (pydantic schema generation is not free)
    app[OPENRPC_BODY] = orjson.dumps(openrpc.build_document())
    app[OPENAPI_BODY] = orjson.dumps(openapi.build_document(routes.ROUTES))
    return app


def preflight(settings: Settings) -> None:
    """Refuse to start, in one line, on agent settings the gateway cannot honour."""
    try:
        McpPolicy.from_settings(settings)
        agent_user(settings)
    except ValueError as err:
        raise SystemExit(f"gateway: {err}") from None
    warn_if_root(settings)


async def link_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serves calls forwarded here and sends calls to other owners (forwarding.route)."""
    link = GatewayLink(
        app[REDIS],
        app[CHANNELS],
        app[SETTINGS].instance_id,
        lambda request: jsonrpc.dispatch(app, request, forwarded=True),
    )
    app[GATEWAY_LINK] = link
    await link.start()
    yield
    await link.close()


async def commands_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reads the commands stream; each entry is dispatched as if it came over HTTP."""
    consumer = CommandConsumer(
        app[REDIS],
        app[CHANNELS],
        app[SETTINGS].instance_id,
        lambda raw: jsonrpc.dispatch_bytes(app, raw),
    )
    app[COMMAND_CONSUMER] = consumer
    await consumer.start()
    yield
    await consumer.close()


def _link_subscribed(app: web.Application) -> Callable[[], Awaitable[object]]:
    """Readiness check: this gateway hears forwarded calls."""

    async def check() -> object:
        link = app.get(GATEWAY_LINK)
        if link is None or not link.subscribed:
            raise ConnectionError("gateway link not subscribed")
        return True

    return check


async def tag_instance(request: web.Request, response: web.StreamResponse) -> None:
    """Which instance answered, behind a balancer (logs, tests, debugging)."""
    response.headers["X-Instance-Id"] = request.app[SETTINGS].instance_id


async def drain(app: web.Application) -> None:
    """on_shutdown: stop reading commands, let running turns finish, release leases.

    Logged at start (the turns it waits for) and at the end (how they ended), so an
    operator sees why a stop took as long as it did.
    """
    started = time.monotonic()
    grace = app[SETTINGS].drain_grace
    manager = app.get(SESSION_MANAGER)
    live = list(manager.live.values()) if manager is not None else []
    turns = [lv.turn for lv in live if lv.turn is not None and not lv.turn.done]
    _log.info(
        "drain started",
        live_sessions=len(live),
        running_turns=len(turns),
        drain_grace=grace,
    )
    consumer = app.get(COMMAND_CONSUMER)
    if consumer is not None:
        await consumer.stop_reading()
    if manager is not None:
        stopping = asyncio.create_task(manager.drain(grace), name="drain")
        done, _ = await asyncio.wait({stopping}, timeout=grace + DRAIN_MARGIN)
        if not done:
            # A stop must end: cleanup (next) stops what is left. Say what it waits on,
            # before the cancel unwinds it.
            _log.error(
                "drain overran; cleanup stops the rest",
                seconds=round(time.monotonic() - started, 3),
                waiting_on=_pending_stacks(),
            )
            stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
    finished = sum(1 for t in turns if isinstance(t.outcome, dict))
    _log.info(
        "drain finished",
        seconds=round(time.monotonic() - started, 3),
        turns_finished=finished,
        turns_cut_short=len(turns) - finished,
    )


def _pending_stacks() -> str:
    """The stacks of the tasks still pending (for the log of a drain that overran)."""
    out = io.StringIO()
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in pending[:STUCK_TASKS_SHOWN]:
        task.print_stack(limit=12, file=out)
    return out.getvalue()
