"""The OpenAPI document of a process, built from its routes table and its handlers' docs.

Each handler declares what it takes and answers with `@api(...)` next to its code; the
process's routes table (routes.py) says which path and method reach it. `build_document`
walks that table, so the document cannot list a route the app does not serve, nor miss
one: a route whose handler has no `@api` (or `@undocumented`) makes the build fail.
Pydantic model classes stand for their own schemas anywhere in a declared schema; the
document's components are generated from exactly the models the handlers name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

REF = "#/components/schemas/{model}"
SSE = "text/event-stream"
BEARER = "bearer"

# A JSON schema in which a pydantic model class may stand for `{"$ref": ...}` to it.
Schema = dict[str, Any] | type[BaseModel]
# What a success answers: a schema (application/json), or other media type(s) as text.
Answer = Schema | str | tuple[str, ...]

ERROR_TEXT = {
    400: "Bad input (the message names the field)",
    401: "Missing or unknown bearer token (when auth is on)",
    403: "Token not allowed for this workspace or session",
    404: "Unknown id or workspace",
    409: "Conflict",
    413: "Body over 1 MiB",
    415: "Body sent with a Content-Type other than JSON",
    429: "Rate limit or stream cap reached; Retry-After says when to retry",
    500: "Our fault",
    503: "A dependency (Postgres or Redis) is down; the message names it",
}
# Every /api/* route passes the auth check first (services/common/auth.py).
AUTH_ERRORS = (401, 403, 429)


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class ApiDoc:
    """One operation as the document shows it; the path and method come from the table."""

    summary: str
    tag: str
    ok: Answer
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: Schema | None = None
    status: int = 200
    # further success answers (e.g. 200 beside 201), by status
    also: dict[int, Answer] = field(default_factory=dict)
    description: str = ""


_DOC = "__api_doc__"
_HIDDEN = "__api_hidden__"
H = TypeVar("H", bound=Callable[..., Any])


def api(
    summary: str,
    tag: str,
    ok: Answer,
    errors: tuple[int, ...] = (),
    params: tuple[Param, ...] = (),
    body: Schema | None = None,
    *,
    status: int = 200,
    also: dict[int, Answer] | None = None,
    description: str = "",
) -> Callable[[H], H]:
    """Declare the handler's operation for the OpenAPI document."""
    doc = ApiDoc(
        summary, tag, ok, errors, params, body, status, also or {}, description
    )

    def mark(handler: H) -> H:
        setattr(handler, _DOC, doc)
        return handler

    return mark


def undocumented(handler: H) -> H:
    """A route left out of the document on purpose (asset files, not API)."""
    setattr(handler, _HIDDEN, True)
    return handler


def doc_of(handler: Callable[..., Any]) -> ApiDoc | None:
    """The handler's declared doc; None when it is undocumented on purpose."""
    if getattr(handler, _HIDDEN, False):
        return None
    doc = getattr(handler, _DOC, None)
    if not isinstance(doc, ApiDoc):
        name = getattr(handler, "__qualname__", repr(handler))
        raise ValueError(f"handler {name} declares no @api doc")
    return doc


def documented_routes(routes: Iterable[web.RouteDef]) -> list[tuple[str, str]]:
    """(METHOD, path) of every route of the table the document shows."""
    return [(r.method, r.path) for r in routes if doc_of(r.handler) is not None]


# Helpers for the shapes that wrap a model: {"session": Session}, {"tasks": [Task]}.
def ref(name: str) -> dict[str, str]:
    """A named component schema that has no pydantic model (see `extra_schemas`)."""
    return {"$ref": REF.format(model=name)}


def wrap(key: str, schema: Schema) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: schema}}


def list_of(key: str, model: Schema) -> dict[str, Any]:
    return wrap(key, {"type": "array", "items": model})


def deleted(key: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"deleted": {"const": True}}
    if key is not None:
        props[key] = {"type": "string"}
    return {"type": "object", "required": list(props), "properties": props}


class _Models:
    """Model classes found in the declared schemas, with the mode each is used in."""

    def __init__(self) -> None:
        self.modes: dict[type[BaseModel], JsonSchemaMode] = {}

    def resolve(self, schema: Any, mode: JsonSchemaMode) -> Any:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            self.modes.setdefault(schema, mode)
            return ref(schema.__name__)
        if isinstance(schema, dict):
            return {k: self.resolve(v, mode) for k, v in schema.items()}
        if isinstance(schema, list):
            return [self.resolve(v, mode) for v in schema]
        return schema

    def schemas(self) -> dict[str, Any]:
        """Component schemas; what we answer leaves empty fields out instead of null."""
        models = sorted(self.modes.items(), key=lambda m: m[0].__name__)
        if not models:
            return {}
        _, defs = models_json_schema(models, ref_template=REF)
        inputs = [(m, mode) for m, mode in models if mode == "validation"]
        input_names: set[str] = set()
        if inputs:
            _, input_defs = models_json_schema(inputs, ref_template=REF)
            input_names = set(input_defs.get("$defs", {}))
        return {
            name: schema if name in input_names else absent_not_null(schema)
            for name, schema in defs.get("$defs", {}).items()
        }


def absent_not_null(schema: Any) -> Any:
    """`anyOf: [X, null]` → X: optional fields are absent on the wire, never null."""
    if isinstance(schema, list):
        return [absent_not_null(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: absent_not_null(v) for k, v in schema.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if out.get("default", ...) is None:
            del out["default"]
        out.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
    return out


def _content(answer: Any) -> dict[str, Any]:
    if isinstance(answer, tuple):
        return {t: {"schema": {"type": "string"}} for t in answer}
    if isinstance(answer, str):
        return {answer: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": answer}}


def operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.split("/") if w and w != "api"]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words or ["root"])


def _operation(method: str, path: str, doc: ApiDoc, models: _Models) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(doc.status): {
            "description": "OK",
            "content": _content(models.resolve(doc.ok, "serialization")),
        }
    }
    for status, answer in doc.also.items():
        responses[str(status)] = {
            "description": "No Content" if status == 204 else "OK",
            **(
                {"content": _content(models.resolve(answer, "serialization"))}
                if answer
                else {}
            ),
        }
    api_route = path.startswith("/api/")
    errors = set(doc.errors) | (set(AUTH_ERRORS) if api_route else set())
    for status in sorted(errors):
        responses[str(status)] = {
            "description": ERROR_TEXT[status],
            "content": _content(ref("Error")),
        }
    out: dict[str, Any] = {
        "operationId": operation_id(method, path),
        "summary": doc.summary,
        "tags": [doc.tag],
        "responses": responses,
    }
    if doc.description:
        out["description"] = doc.description
    if api_route:
        out["security"] = [{BEARER: []}, {}]
    if doc.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in doc.params
        ]
    if doc.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": models.resolve(doc.body, "validation")}
            },
        }
    return out


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "description": "What was wrong, naming the field or id",
        }
    },
}


def build_document(
    routes: Iterable[web.RouteDef],
    *,
    title: str,
    description: str,
    extra_schemas: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole document of one process's routes table; pure, so tests share it."""
    models = _Models()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        doc = doc_of(route.handler)
        if doc is None:
            continue
        item = paths.setdefault(route.path, {})
        key = route.method.lower()
        if key in item:
            raise ValueError(f"{route.method} {route.path} is in the table twice")
        item[key] = _operation(route.method, route.path, doc, models)
    extras = {
        name: models.resolve(schema, "serialization")
        for name, schema in (extra_schemas or {}).items()
    }
    schemas = {**models.schemas(), "Error": ERROR_SCHEMA, **extras}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0", "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An API token (routa-tokens create) or a share token; needed "
                        "on /api/* once auth is on. `?access_token=` works too, for "
                        "EventSource."
                    ),
                }
            },
        },
    }
