"""`GET /api/acp/openrpc.json`: the OpenRPC 1.x document of the JSON-RPC methods on POST /api/acp.

Params come from the pydantic models that methods.py validates with, so the document says
what the code accepts; results and error codes are written down from docs/api.md. A test fails
when the registry holds a method this table does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.common.apidoc import api
from services.gateway.keys import OPENRPC_BODY
from services.gateway.methods import (
    CancelParams,
    InitializeParams,
    LoadParams,
    PromptParams,
    RespondElicitationParams,
    RespondParams,
    SetConfigOptionParams,
    SetModelParams,
    SetModeParams,
)
from services.gateway.params import NewParams
from shared.errors import (
    AGENT_ERROR,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROVIDER_UNAVAILABLE,
    SESSION_NOT_FOUND,
    SESSION_UNSERVABLE,
)

OPENRPC_PATH = "/api/acp/openrpc.json"
_REF = "#/components/schemas/{model}"

_ERRORS: dict[str, tuple[int, str]] = {
    "ParseError": (PARSE_ERROR, "Parse error: body is not valid JSON (id null)"),
    "InvalidRequest": (INVALID_REQUEST, "Invalid Request"),
    "MethodNotFound": (METHOD_NOT_FOUND, "Method not found: <method>"),
    "InvalidParams": (INVALID_PARAMS, "Invalid params (the message names the field)"),
    "InternalError": (INTERNAL_ERROR, "Internal error (no traceback)"),
    "AgentError": (
        AGENT_ERROR,
        "Agent or runtime failure; an error the agent returned is in data.agentError",
    ),
    "ProviderUnavailable": (
        PROVIDER_UNAVAILABLE,
        "Provider not available (binary missing or credentials not set)",
    ),
    "SessionNotFound": (SESSION_NOT_FOUND, "Session not found: <id>"),
    "SessionUnservable": (
        SESSION_UNSERVABLE,
        "Session cannot be served (owner unreachable and not adoptable)",
    ),
}

_EXTRA_SCHEMAS: dict[str, Any] = {
    "Empty": {"type": "object", "maxProperties": 0},
    "SessionStarted": {
        "type": "object",
        "required": ["sessionId", "provider", "role", "acpStatus"],
        "properties": {
            "sessionId": {"type": "string"},
            "provider": {"type": "string"},
            "role": {"type": "string"},
            "acpStatus": {"type": "string"},
            "ownerInstanceId": {"type": "string"},
            "cached": {
                "const": True,
                "description": "Same idempotencyKey within the window",
            },
        },
    },
    "PromptResult": {
        "oneOf": [
            {
                "type": "object",
                "required": ["stopReason"],
                "properties": {"stopReason": {"type": "string"}},
            },
            {
                "type": "object",
                "required": ["sessionId", "pending"],
                "properties": {
                    "sessionId": {"type": "string"},
                    "pending": {"const": True},
                },
                "description": "PROMPT_TIMEOUT passed; the turn goes on",
            },
        ]
    },
    "LoadResult": {
        "type": "object",
        "required": ["sessionId", "provider", "role", "acpStatus", "resumeMode"],
        "properties": {
            "sessionId": {"type": "string"},
            "provider": {"type": "string"},
            "role": {"type": "string"},
            "acpStatus": {"type": "string"},
            "resumeMode": {"enum": ["attached", "resumed", "native", "recreated"]},
        },
    },
    "InitializeResult": {
        "type": "object",
        "required": ["protocolVersion", "agentCapabilities", "agentInfo"],
        "properties": {
            "protocolVersion": {"const": 1},
            "agentCapabilities": {"type": "object"},
            "agentInfo": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                },
            },
        },
    },
    "ProvidersResult": {
        "type": "object",
        "required": ["providers"],
        "properties": {
            "providers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "name", "description", "command", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "command": {"type": "string"},
                        "status": {"enum": ["available", "unavailable"]},
                    },
                },
            }
        },
    },
    "ConfigOptionsResult": {
        "type": "object",
        "required": ["configOptions"],
        "properties": {
            "configOptions": {
                "type": "array",
                "items": {"type": "object"},
                "description": "The agent's complete option list after the change",
            }
        },
    },
    "Ok": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}},
    },
}


@dataclass(frozen=True)
class MethodDoc:
    name: str
    summary: str
    params: type[BaseModel] | None
    result: str
    errors: tuple[str, ...]


_SESSION_ERRORS = (
    "InvalidParams",
    "SessionNotFound",
    "AgentError",
    "SessionUnservable",
)

METHOD_DOCS: tuple[MethodDoc, ...] = (
    MethodDoc(
        "initialize",
        "What this gateway speaks (ACP protocol version 1)",
        InitializeParams,
        "InitializeResult",
        (),
    ),
    MethodDoc(
        "session/new",
        "Create a session; the agent starts in the background (acp_status events follow)",
        NewParams,
        "SessionStarted",
        # SessionNotFound: a parentSessionId that is unknown or of another workspace
        ("InvalidParams", "SessionNotFound", "AgentError", "ProviderUnavailable"),
    ),
    MethodDoc(
        "session/prompt",
        "Run one turn and wait for its stop reason (or `pending` after PROMPT_TIMEOUT); "
        "ifBusy says what happens while a turn runs or the workspace is at its "
        "maxConcurrentTurns: reject (-32000), enqueue (a prompt_queued event, the reply "
        "when its own turn ends) or interrupt (the running turn is cancelled first)",
        PromptParams,
        "PromptResult",
        (*_SESSION_ERRORS, "ProviderUnavailable"),
    ),
    MethodDoc(
        "session/cancel",
        "Cancel the running turn (a watchdog ends it after CANCEL_WATCHDOG); with "
        "queuedPromptId, drop that queued prompt instead (its call answers cancelled)",
        CancelParams,
        "Empty",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "session/set_mode",
        "Switch the agent's mode; persisted; current_mode_update event",
        SetModeParams,
        "Empty",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "session/set_model",
        "Switch the model (config option, else legacy session/set_model); persisted",
        SetModelParams,
        "Empty",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "session/set_config_option",
        "Set one of the agent's config options (select or boolean); model/mode persisted",
        SetConfigOptionParams,
        "ConfigOptionsResult",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "session/load",
        "Attach to or resume a session (native load, else a recreated agent session)",
        LoadParams,
        "LoadResult",
        (*_SESSION_ERRORS, "ProviderUnavailable"),
    ),
    MethodDoc(
        "session/respond_user_input",
        "Answer a pending permission request",
        RespondParams,
        "Ok",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "session/respond_elicitation",
        "Answer a pending elicitation request of the agent (accept with content, decline, cancel)",
        RespondElicitationParams,
        "Ok",
        _SESSION_ERRORS,
    ),
    MethodDoc(
        "_providers/list",
        "Agent presets and whether each can run here, available first",
        None,
        "ProvidersResult",
        (),
    ),
)

_ENVELOPE_ERRORS = ("ParseError", "InvalidRequest", "MethodNotFound", "InternalError")


def _params_of(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = defs[model.__name__]
    required = set(schema.get("required", []))
    return [
        {"name": name, "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def build_document() -> dict[str, Any]:
    """The whole document; pure, so tests and the route share it."""
    models = {d.params for d in METHOD_DOCS if d.params is not None}
    _, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    defs: dict[str, Any] = dict(top.get("$defs", {}))
    methods = []
    for doc in METHOD_DOCS:
        errors = [
            {"$ref": f"#/components/errors/{name}"}
            for name in (*doc.errors, *_ENVELOPE_ERRORS)
        ]
        methods.append(
            {
                "name": doc.name,
                "summary": doc.summary,
                "paramStructure": "by-name",
                "params": [] if doc.params is None else _params_of(doc.params, defs),
                "result": {
                    "name": "result",
                    "schema": {"$ref": _REF.format(model=doc.result)},
                },
                "errors": errors,
            }
        )
    # Params are inlined per method; keep only the nested models they refer to.
    schemas = {k: v for k, v in defs.items() if k not in {m.__name__ for m in models}}
    schemas.update(_EXTRA_SCHEMAS)
    return {
        "openrpc": "1.3.2",
        "info": {
            "title": "Routa session layer: ACP gateway",
            "version": "0.1.0",
            "description": (
                "JSON-RPC 2.0 over POST /api/acp (batches and notifications per "
                "JSON-RPC 2.0). Transport refusals are HTTP with {error}: 401/403 "
                "auth, 413 body over 1 MiB, 415 not JSON, 429 rate limited. Events "
                "stream from GET /api/acp?sessionId= (SSE)."
            ),
        },
        "servers": [{"name": "gateway", "url": "/api/acp"}],
        "methods": methods,
        "components": {
            "schemas": schemas,
            "errors": {
                name: {"code": code, "message": message}
                for name, (code, message) in _ERRORS.items()
            },
        },
    }


@api("The OpenRPC document of the JSON-RPC methods", "meta", {"type": "object"})
async def openrpc_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENRPC_BODY], content_type="application/json")
