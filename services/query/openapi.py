"""`GET /api/openapi.json`: the OpenAPI 3.1 document of the query service.

Component schemas come from the shared pydantic models (one source for code and document);
paths come from the table below. A test walks the app's router and fails when a route is
registered but not listed here, so the table cannot drift silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.models.note import Note, NoteGroup, NoteWrite
from shared.models.session import (
    NAME_MAX,
    SESSION_STATUSES,
    Session,
    SessionRef,
)
from shared.models.share import ShareCreate, ShareLink
from shared.models.task import (
    TASK_STATUSES,
    Task,
    TaskCreate,
    TaskFields,
    TaskStatusChange,
)
from shared.models.webhook import Webhook, WebhookCreate, WebhookDelivery
from shared.models.workspace import Workspace, WorkspaceCreate, WorkspacePatch

OPENAPI_PATH = "/api/openapi.json"
# Routes left out on purpose: dashboard assets are files, not API.
UNDOCUMENTED_PREFIXES = ("/static/",)

_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (Session, "serialization"),
    (SessionRef, "serialization"),
    (Note, "serialization"),
    (NoteGroup, "serialization"),
    (NoteWrite, "validation"),
    (Task, "serialization"),
    (TaskCreate, "validation"),
    (TaskFields, "validation"),
    (TaskStatusChange, "validation"),
    (Workspace, "serialization"),
    (ShareLink, "serialization"),
    (ShareCreate, "validation"),
    (WorkspaceCreate, "validation"),
    (WorkspacePatch, "validation"),
    (Webhook, "serialization"),
    (WebhookCreate, "validation"),
    (WebhookDelivery, "serialization"),
]

_REF = "#/components/schemas/{model}"
# Models clients send: they may carry null; everything we answer leaves empty fields out.
_INPUT_SCHEMAS = frozenset(
    {m.__name__ for m, mode in _MODELS if mode == "validation"}
    | {"NoteMetadataIn", "CodebaseIn"}
)

# Shapes that have no pydantic model of their own.
_EXTRA_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "string",
                "description": "What was wrong, naming the field or id",
            }
        },
    },
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
                        "items": {"$ref": _REF.format(model="Codebase")},
                    },
                },
            },
            "files": {"type": "array", "items": {"type": "string"}},
            "historyLength": {"type": "integer", "minimum": 0},
            "parent": {"$ref": _REF.format(model="SessionRef")},
            "children": {
                "type": "array",
                "items": {"$ref": _REF.format(model="SessionRef")},
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

_ERROR_TEXT = {
    400: "Bad input (the message names the field)",
    401: "Missing or unknown bearer token (when AUTH_TOKENS is set)",
    403: "Token not allowed for this workspace",
    404: "Unknown id or workspace",
    409: "Conflict",
    413: "Body over 1 MiB",
    415: "Body sent with a Content-Type other than JSON",
    500: "Our fault",
    503: "A dependency (Postgres or Redis) is down; the message names it",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _wrap(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: schema}}


def _list_of(key: str, model: str) -> dict[str, Any]:
    return _wrap(key, {"type": "array", "items": _ref(model)})


def _deleted(key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["deleted", key],
        "properties": {"deleted": {"const": True}, key: {"type": "string"}},
    }


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    ok: dict[str, Any] | str | tuple[str, ...]  # JSON schema, or non-JSON media type(s)
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None
    status: int = 200
    also: dict[int, dict[str, Any]] = field(default_factory=dict)


SSE = "text/event-stream"
_WS = Param("workspaceId", description="Workspace id")
_WS_REQ = Param("workspaceId", required=True, description="Workspace id (required)")
_SID = Param("session_id", "path", required=True, description="Session id (UUID)")
_TID = Param("id", "path", required=True, description="Task id")
_WID = Param("id", "path", required=True, description="Workspace id")
_LIMIT = Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})
_HOOK = Param("webhook_id", "path", required=True, description="Webhook id (UUID)")

OPERATIONS: tuple[Op, ...] = (
    # sessions
    Op(
        "GET",
        "/api/sessions",
        "List sessions, newest first (Cache-Control: no-store)",
        "sessions",
        _list_of("sessions", "Session"),
        (400, 500),
        (
            _WS,
            Param("parentSessionId"),
            Param("status", schema={"enum": list(SESSION_STATUSES)}),
            _LIMIT,
        ),
    ),
    Op(
        "GET",
        "/api/sessions/events",
        "SSE of session lifecycle messages (session:created/updated/deleted)",
        "sessions",
        SSE,
        (),
        (_WS,),
    ),
    Op(
        "GET",
        "/api/sessions/{session_id}",
        "One session",
        "sessions",
        _wrap("session", _ref("Session")),
        (404, 503),
        (_SID,),
    ),
    Op(
        "PATCH",
        "/api/sessions/{session_id}",
        "Rename a session (stores a session_renamed event)",
        "sessions",
        _ref("Ok"),
        (400, 404, 413, 415, 503),
        (_SID,),
        _ref("SessionRename"),
    ),
    Op(
        "DELETE",
        "/api/sessions/{session_id}",
        "Stop the agent wherever it runs, delete the session and its events",
        "sessions",
        _ref("Ok"),
        (404, 503),
        (_SID,),
    ),
    Op(
        "POST",
        "/api/sessions/{session_id}/disconnect",
        "Stop the agent process, keep the session (status closed)",
        "sessions",
        _ref("Ok"),
        (404, 503),
        (_SID,),
    ),
    Op(
        "POST",
        "/api/sessions/{session_id}/fork",
        "Fork a session (no process until its first prompt)",
        "sessions",
        _wrap("session", _ref("Session")),
        (400, 404, 413, 415, 503),
        (_SID,),
        _ref("SessionFork"),
        status=201,
    ),
    Op(
        "GET",
        "/api/sessions/{session_id}/history",
        "The stored event log, in order (Cache-Control: no-store)",
        "sessions",
        _wrap("history", {"type": "array", "items": _ref("Event")}),
        (400, 404, 503),
        (
            _SID,
            Param(
                "after",
                schema={"type": "string", "pattern": "^[0-9]+$"},
                description="Events after this eventId (default 0)",
            ),
            _LIMIT,
            Param(
                "consolidated",
                schema={"enum": ["true", "false"]},
                description="Merge runs of agent_message_chunk into agent_message",
            ),
        ),
    ),
    Op(
        "GET",
        "/api/sessions/{session_id}/context",
        "cwd, mode, model, workspace, touched files, history size, parent and children",
        "sessions",
        _ref("SessionContext"),
        (404, 503),
        (_SID,),
    ),
    # share links: read-only tokens for one session
    Op(
        "POST",
        "/api/sessions/{session_id}/shares",
        "Create a share link; its token and url are shown only in this answer",
        "sessions",
        {
            "type": "object",
            "required": ["share", "token", "url"],
            "properties": {
                "share": _ref("ShareLink"),
                "token": {"type": "string"},
                "url": {
                    "type": "string",
                    "description": "The read-only page /s/<token>",
                },
            },
        },
        (400, 404, 413, 415, 503),
        (_SID,),
        _ref("ShareCreate"),
        status=201,
    ),
    Op(
        "GET",
        "/api/sessions/{session_id}/shares",
        "The session's share links (never their tokens)",
        "sessions",
        _list_of("shares", "ShareLink"),
        (404, 503),
        (_SID,),
    ),
    Op(
        "DELETE",
        "/api/sessions/{session_id}/shares/{share_id}",
        "Revoke a share link: its token answers 401 and its open streams end",
        "sessions",
        {
            "type": "object",
            "required": ["deleted"],
            "properties": {"deleted": {"const": True}},
        },
        (404, 503),
        (_SID, Param("share_id", "path", required=True, description="Share id")),
    ),
    Op(
        "GET",
        "/api/sessions/{session_id}/export",
        "The whole stored log as a download (Content-Disposition), streamed",
        "sessions",
        ("text/markdown", "application/x-ndjson", "text/html"),
        (400, 404, 503),
        (
            _SID,
            Param(
                "format",
                schema={"enum": ["markdown", "jsonl", "html"], "default": "markdown"},
                description="jsonl: one stored event per line, as /history has them",
            ),
        ),
    ),
    # search
    Op(
        "GET",
        "/api/search",
        "Full-text search of a workspace's user prompts and agent messages, best first",
        "search",
        _ref("SearchResults"),
        (400, 404, 503),
        (
            _WS_REQ,
            Param(
                "q",
                required=True,
                schema={"type": "string", "minLength": 1, "maxLength": 500},
                description='Web-search syntax: words (ANDed), "phrases", -exclusions, OR',
            ),
            Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 100}),
            Param("after", description="The `next` cursor of the previous page"),
        ),
    ),
    # notes
    Op(
        "GET",
        "/api/notes/events",
        "SSE of note:created/updated/deleted messages of a workspace",
        "notes",
        SSE,
        (400, 404),
        (_WS_REQ,),
    ),
    Op(
        "GET",
        "/api/notes",
        "Notes of a workspace ({notes}), one note (noteId → {note}) or groups (groupBy=session → {groups})",
        "notes",
        {
            "oneOf": [
                _list_of("notes", "Note"),
                _wrap("note", _ref("Note")),
                _list_of("groups", "NoteGroup"),
            ]
        },
        (400, 404, 503),
        (
            _WS_REQ,
            Param("sessionId"),
            Param("type", schema={"enum": ["spec", "task", "general"]}),
            Param("noteId"),
            Param("groupBy", schema={"enum": ["session"]}),
        ),
    ),
    Op(
        "POST",
        "/api/notes",
        "Create a note (201), or update it when noteId names an existing one (200)",
        "notes",
        _wrap("note", _ref("Note")),
        (400, 404, 413, 415, 503),
        (),
        _ref("NoteWrite"),
        status=201,
        also={200: _wrap("note", _ref("Note"))},
    ),
    Op(
        "DELETE",
        "/api/notes",
        "Delete one note",
        "notes",
        _deleted("noteId"),
        (400, 404, 503),
        (
            _WS_REQ,
            Param("noteId", required=True),
            Param("source", schema={"enum": ["agent", "user", "system"]}),
        ),
    ),
    # tasks
    Op(
        "GET",
        "/api/tasks/ready",
        "PENDING tasks whose dependencies are all COMPLETED",
        "tasks",
        _list_of("tasks", "Task"),
        (400, 404, 503),
        (_WS_REQ,),
    ),
    Op(
        "GET",
        "/api/tasks/events",
        "SSE of task:created/updated/deleted messages of a workspace",
        "tasks",
        SSE,
        (400, 404),
        (_WS_REQ,),
    ),
    Op(
        "GET",
        "/api/tasks",
        "Tasks of a workspace",
        "tasks",
        _list_of("tasks", "Task"),
        (400, 404, 503),
        (
            _WS_REQ,
            Param("sessionId"),
            Param(
                "status",
                description="Case-insensitive, one of " + ", ".join(TASK_STATUSES),
            ),
            Param("assignedTo"),
        ),
    ),
    Op(
        "POST",
        "/api/tasks",
        "Create a task (title, objective, workspaceId required, checked in that order)",
        "tasks",
        _wrap("task", _ref("Task")),
        (400, 404, 409, 413, 415, 503),
        (),
        _ref("TaskCreate"),
        status=201,
    ),
    Op(
        "DELETE",
        "/api/tasks",
        "Delete one task by ?taskId= (a workspace-wide delete is refused with 400)",
        "tasks",
        _deleted("taskId"),
        (400, 404, 503),
        (Param("taskId", required=True), _WS),
    ),
    Op(
        "GET",
        "/api/tasks/{id}",
        "One task",
        "tasks",
        _wrap("task", _ref("Task")),
        (404, 503),
        (_TID,),
    ),
    Op(
        "PATCH",
        "/api/tasks/{id}",
        "Update a task (status sets columnId and vice versa)",
        "tasks",
        _wrap("task", _ref("Task")),
        (400, 404, 413, 415, 503),
        (_TID,),
        _ref("TaskFields"),
    ),
    Op(
        "DELETE",
        "/api/tasks/{id}",
        "Delete a task",
        "tasks",
        _deleted("taskId"),
        (404, 503),
        (_TID,),
    ),
    Op(
        "POST",
        "/api/tasks/{id}/status",
        "Set a task's status (case-insensitive)",
        "tasks",
        _wrap("task", _ref("Task")),
        (400, 404, 413, 415, 503),
        (_TID,),
        _ref("TaskStatusChange"),
    ),
    # workspaces
    Op(
        "GET",
        "/api/workspaces",
        "Every workspace",
        "workspaces",
        _list_of("workspaces", "Workspace"),
        (503,),
    ),
    Op(
        "POST",
        "/api/workspaces",
        "Create a workspace",
        "workspaces",
        _wrap("workspace", _ref("Workspace")),
        (400, 409, 413, 415, 503),
        (),
        _ref("WorkspaceCreate"),
        status=201,
    ),
    Op(
        "GET",
        "/api/workspaces/{id}",
        "One workspace",
        "workspaces",
        _wrap("workspace", _ref("Workspace")),
        (404, 503),
        (_WID,),
    ),
    Op(
        "PATCH",
        "/api/workspaces/{id}",
        "Update a workspace's title, status or codebases",
        "workspaces",
        _wrap("workspace", _ref("Workspace")),
        (400, 404, 413, 415, 503),
        (_WID,),
        _ref("WorkspacePatch"),
    ),
    Op(
        "DELETE",
        "/api/workspaces/{id}",
        "Delete a workspace with its sessions, events, notes and tasks (default: 409)",
        "workspaces",
        _ref("Ok"),
        (404, 409, 503),
        (_WID,),
    ),
    # webhooks of a workspace
    Op(
        "POST",
        "/api/workspaces/{id}/webhooks",
        "Register a webhook; the signing secret is in this reply only",
        "webhooks",
        {
            "type": "object",
            "required": ["webhook", "secret"],
            "properties": {"webhook": _ref("Webhook"), "secret": {"type": "string"}},
        },
        (400, 404, 413, 415, 503),
        (_WID,),
        _ref("WebhookCreate"),
        status=201,
    ),
    Op(
        "GET",
        "/api/workspaces/{id}/webhooks",
        "The workspace's webhooks, oldest first (no secrets)",
        "webhooks",
        _list_of("webhooks", "Webhook"),
        (404, 503),
        (_WID,),
    ),
    Op(
        "DELETE",
        "/api/workspaces/{id}/webhooks/{webhook_id}",
        "Delete a webhook and its deliveries",
        "webhooks",
        {
            "type": "object",
            "required": ["deleted"],
            "properties": {"deleted": {"const": True}},
        },
        (404, 503),
        (_WID, _HOOK),
    ),
    Op(
        "GET",
        "/api/workspaces/{id}/webhooks/{webhook_id}/deliveries",
        "A webhook's deliveries, newest first",
        "webhooks",
        _list_of("deliveries", "WebhookDelivery"),
        (400, 404, 503),
        (_WID, _HOOK, _LIMIT),
    ),
    # this document, the dashboard, operations
    Op("GET", OPENAPI_PATH, "This document", "meta", {"type": "object"}),
    Op("GET", "/", "The live dashboard", "meta", "text/html"),
    Op(
        "GET",
        "/s/{token}",
        "A shared session, read-only and live (404 page when the link is not valid)",
        "meta",
        "text/html",
        (),
        (Param("token", "path", required=True, description="Share token"),),
    ),
    Op(
        "GET",
        "/healthz",
        "Liveness: the process is up (no dependency calls)",
        "ops",
        {"type": "object"},
    ),
    Op(
        "GET",
        "/readyz",
        "Readiness: Postgres and Redis answer; 503 while draining",
        "ops",
        _ref("Ok"),
        (503,),
    ),
    Op("GET", "/metrics", "Prometheus metrics of this process", "ops", "text/plain"),
)


def _operation(op: Op) -> dict[str, Any]:
    def content(schema: dict[str, Any] | str | tuple[str, ...]) -> dict[str, Any]:
        if isinstance(schema, tuple):
            return {t: {"schema": {"type": "string"}} for t in schema}
        if isinstance(schema, str):
            return {schema: {"schema": {"type": "string"}}}
        return {"application/json": {"schema": schema}}

    responses: dict[str, Any] = {
        str(op.status): {"description": "OK", "content": content(op.ok)}
    }
    for status, schema in op.also.items():
        responses[str(status)] = {"description": "OK", "content": content(schema)}
    errors = set(op.errors)
    if op.path.startswith("/api/") and op.path != OPENAPI_PATH:
        errors |= {401, 403}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": content(_ref("Error")),
        }
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": op.body}},
        }
    return out


def _operation_id(op: Op) -> str:
    words = [w.strip("{}") for w in op.path.split("/") if w and w != "api"]
    return op.method.lower() + "".join(w[:1].upper() + w[1:] for w in words or ["root"])


def _absent_not_null(schema: Any) -> Any:
    """`anyOf: [X, null]` → X: optional fields are absent on the wire, never null."""
    if isinstance(schema, list):
        return [_absent_not_null(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _absent_not_null(v) for k, v in schema.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if out.get("default", ...) is None:
            del out["default"]
        out.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
    return out


def build_document() -> dict[str, Any]:
    """The whole document; pure, so tests and the route share it."""
    _, defs = models_json_schema(_MODELS, ref_template=_REF)
    schemas = {
        name: schema if name in _INPUT_SCHEMAS else _absent_not_null(schema)
        for name, schema in defs.get("$defs", {}).items()
    }
    schemas.update(_EXTRA_SCHEMAS)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Routa session layer: query service",
            "version": "0.1.0",
            "description": (
                "Read side of the session layer (sessions, history, notes, tasks, "
                "workspaces). The write side is JSON-RPC on the gateway: see "
                "/api/acp/openrpc.json."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


OPENAPI_BODY = web.AppKey("openapi_body", bytes)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


def setup(app: web.Application) -> None:
    """Built once per app (pydantic schema generation is not free)."""
    app[OPENAPI_BODY] = orjson.dumps(build_document())
    app.router.add_get(OPENAPI_PATH, openapi_json)
