"""The routes table of the gateway: every route it serves.

The OpenAPI document (openapi.py) is built from this table and each handler's `@api`
doc; the JSON-RPC methods behind POST /api/acp are in methods.registry() and OpenRPC.
"""

from __future__ import annotations

from aiohttp import web

from services.common.health import healthz, metrics_handler, readyz
from services.gateway import jsonrpc, openapi, openrpc, sse

ROUTES: list[web.RouteDef] = [
    web.post("/api/acp", jsonrpc.handle_post),
    web.get("/api/acp", sse.handle_stream),
    web.get(openrpc.OPENRPC_PATH, openrpc.openrpc_json),
    web.get(openapi.OPENAPI_PATH, openapi.openapi_json),
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics_handler),
]
