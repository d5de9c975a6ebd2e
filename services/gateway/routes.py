"""Route table of the gateway: every module's `setup(app)` is called from here, in order."""

from __future__ import annotations

from aiohttp import web

from services.gateway import jsonrpc, methods, openrpc, sse


def setup(app: web.Application) -> None:
    # POST /api/acp and the method registry first: the modules below register into it.
    jsonrpc.setup(app)
    # GET /api/acp, the event fan-out (cleanup ctx after Postgres and Redis) and the
    # shutdown sentinel.
    sse.setup(app)
    # The JSON-RPC methods, the agent runtime and its cleanup contexts (runtime modules).
    methods.setup(app)
    # Whatever the envelope answers itself when no module registered it (`initialize`).
    jsonrpc.add_default_methods(app)
    openrpc.setup(app)
