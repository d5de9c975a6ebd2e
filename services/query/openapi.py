"""`GET /api/openapi.json`: the OpenAPI 3.1 document of the query service.

Built from the query service's routes table (routes.py) and the `@api` doc each handler
declares (services/common/apidoc.py); the component schemas come from the pydantic models
those docs name, plus the few shapes below that have no model of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from services.common.apidoc import api
from services.common.apidoc import build_document as build
from services.query.keys import OPENAPI_BODY
from shared.models.session import NAME_MAX, SessionRef
from shared.models.workspace import Codebase

OPENAPI_PATH = "/api/openapi.json"

EXTRA_SCHEMAS: dict[str, Any] = {
    "Ok": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}},
    },
    "Event": {
        "type": "object",
        "description": "One session/update as stored and streamed",
        "required": ["sessionId", "eventId", "update"],
        "properties": {
            "sessionId": {"type": "string"},
            "eventId": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The session's sequence number as a decimal string",
            },
            "update": {
                "type": "object",
                "required": ["sessionUpdate"],
                "properties": {"sessionUpdate": {"type": "string"}},
                "additionalProperties": True,
            },
        },
        "additionalProperties": True,
    },
    "SessionRename": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX}
        },
    },
    "SessionFork": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX}
        },
    },
    "SessionContext": {
        "type": "object",
        "required": [
            "sessionId",
            "cwd",
            "workspace",
            "files",
            "historyLength",
            "children",
        ],
        "properties": {
            "sessionId": {"type": "string"},
            "cwd": {"type": "string"},
            "modeId": {"type": "string"},
            "model": {"type": "string"},
            "workspace": {
                "type": "object",
                "required": ["id", "codebases"],
                "properties": {
                    "id": {"type": "string"},
                    "title": {"type": "string"},
                    "codebases": {
                        "type": "array",
                        "items": Codebase,
                    },
                },
            },
            "files": {"type": "array", "items": {"type": "string"}},
            "historyLength": {"type": "integer", "minimum": 0},
            "parent": SessionRef,
            "children": {
                "type": "array",
                "items": SessionRef,
            },
        },
    },
    "SearchResults": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sessionId", "eventId", "kind", "snippet", "at"],
                    "properties": {
                        "sessionId": {"type": "string"},
                        "sessionName": {"type": "string"},
                        "eventId": {
                            "type": "string",
                            "description": "The user_message, or an agent message's last chunk",
                        },
                        "kind": {"enum": ["user_message", "agent_message"]},
                        "snippet": {
                            "type": "string",
                            "description": "HTML: matches in <mark>…</mark>, the rest escaped",
                        },
                        "at": {"type": "string"},
                    },
                },
            },
            "next": {
                "type": "string",
                "description": "Cursor of the next page (`after`)",
            },
        },
    },
}


def build_document(routes: Iterable[web.RouteDef]) -> dict[str, Any]:
    """The document of `routes` (the query service's table); pure, tests share it."""
    return build(
        routes,
        title="Routa session layer: query service",
        description=(
            "Read side of the session layer (sessions, history, notes, tasks, "
            "workspaces). The write side is JSON-RPC on the gateway: its HTTP routes "
            "are in /api/acp/openapi.json, its methods in /api/acp/openrpc.json. "
            "An explorer of both documents is served at /api/docs."
        ),
        extra_schemas=EXTRA_SCHEMAS,
    )


@api("This document", "meta", {"type": "object"})
async def openapi_json(request: web.Request) -> web.Response:
    """Built once per app by create_app (pydantic schema generation is not free)."""
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")
