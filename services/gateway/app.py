"""ACP gateway app factory: the write side."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from services.common.app import base_app
from services.common.health import HEALTH
from services.common.keys import SETTINGS
from services.gateway import commands, forwarding, jsonrpc
from services.gateway.confine import agent_user, warn_if_root
from services.gateway.keys import SESSION_MANAGER
from services.gateway.mcp import McpPolicy
from services.gateway.sse import close_streams_on_shutdown
from shared.settings import Settings

DEFAULT_PORT = 8001
_log = structlog.stdlib.get_logger("routa.drain")


def create_app(settings: Settings) -> web.Application:
    preflight(settings)
    app = base_app(settings, "gateway")
    from services.gateway import routes

    routes.setup(app)
    setup_scaleout(app)
    return app


def preflight(settings: Settings) -> None:
    """Refuse to start, in one line, on agent settings the gateway cannot honour."""
    try:
        McpPolicy.from_settings(settings)
        agent_user(settings)
    except ValueError as err:
        raise SystemExit(f"gateway: {err}") from None
    warn_if_root(settings)


def setup_scaleout(app: web.Application) -> None:
    """Forwarding between gateways, the commands stream and the SIGTERM drain.

    Both cleanup contexts come after the session manager's: they dispatch into it, and
    unwind before it stops the agents.
    """
    app.cleanup_ctx.append(
        forwarding.link_ctx(
            lambda app: lambda request: jsonrpc.dispatch(app, request, forwarded=True)
        )
    )
    app.cleanup_ctx.append(
        commands.commands_ctx(lambda app: lambda raw: jsonrpc.dispatch_bytes(app, raw))
    )

    async def link_subscribed() -> object:
        link = app.get(forwarding.GATEWAY_LINK)
        if link is None or not link.subscribed:
            raise ConnectionError("gateway link not subscribed")
        return True

    app[HEALTH].checks["gatewayLink"] = link_subscribed
    instance_id = app[SETTINGS].instance_id

    async def tag_instance(_request: web.Request, response: web.StreamResponse) -> None:
        # which instance answered, behind a balancer (logs, tests, debugging)
        response.headers["X-Instance-Id"] = instance_id

    app.on_response_prepare.append(tag_instance)
    # After readiness turned 503, before the SSE streams end: running turns finish first,
    # so subscribers here see them through, then reconnect elsewhere and replay.
    shutdown = app.on_shutdown
    at = (
        shutdown.index(close_streams_on_shutdown)
        if close_streams_on_shutdown in shutdown
        else len(shutdown)
    )
    shutdown.insert(at, drain)


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
    consumer = app.get(commands.COMMAND_CONSUMER)
    if consumer is not None:
        await consumer.stop_reading()
    if manager is not None:
        await manager.drain(grace)
    finished = sum(1 for t in turns if isinstance(t.outcome, dict))
    _log.info(
        "drain finished",
        seconds=round(time.monotonic() - started, 3),
        turns_finished=finished,
        turns_cut_short=len(turns) - finished,
    )
