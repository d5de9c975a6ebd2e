"""`GET /api/acp/openapi.json`: the OpenAPI 3.1 document of the gateway's HTTP routes.

Built from the gateway's routes table (routes.py) and each handler's `@api` doc, like the
query service's. It covers the transport: POST /api/acp (JSON-RPC 2.0, 204 when every
call was a notification, 413/415/429 refusals) and the event stream GET /api/acp. The
methods themselves are in the OpenRPC document (openrpc.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from services.common.apidoc import api
from services.common.apidoc import build_document as build
from services.gateway.keys import OPENAPI_BODY

OPENAPI_PATH = "/api/acp/openapi.json"

_ID = {"type": ["string", "integer", "null"]}
_REQUEST = {
    "type": "object",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {**_ID, "description": "Absent: a notification, which gets no answer"},
        "method": {"type": "string", "description": "See /api/acp/openrpc.json"},
        "params": {"type": "object"},
    },
}
_RESPONSE = {
    "type": "object",
    "required": ["jsonrpc", "id"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": _ID,
        "result": {},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "data": {},
            },
        },
    },
}

EXTRA_SCHEMAS: dict[str, Any] = {
    "JsonRpcRequest": _REQUEST,
    "JsonRpcBatch": {"type": "array", "minItems": 1, "items": _REQUEST},
    "JsonRpcResponse": _RESPONSE,
    "JsonRpcResponses": {"type": "array", "items": _RESPONSE},
}


def build_document(routes: Iterable[web.RouteDef]) -> dict[str, Any]:
    """The document of `routes` (the gateway's table); pure, tests share it."""
    return build(
        routes,
        title="Routa session layer: ACP gateway",
        description=(
            "Write side of the session layer: JSON-RPC 2.0 on POST /api/acp (methods "
            "in /api/acp/openrpc.json) and each session's events as Server-Sent "
            "Events on GET /api/acp?sessionId=."
        ),
        extra_schemas=EXTRA_SCHEMAS,
    )


@api("This document", "meta", {"type": "object"})
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")
