"""The published API documents: valid, served, and covering every route and method."""

from __future__ import annotations

import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from services.common.apidoc import doc_of, documented_routes, undocumented
from services.gateway import openapi as gateway_openapi
from services.gateway import routes as gateway_routes
from services.gateway.app import create_app as create_gateway
from services.gateway.keys import METHODS
from services.gateway.openrpc import OPENRPC_PATH
from services.gateway.openrpc import build_document as build_openrpc
from services.query import routes as query_routes
from services.query.app import create_app as create_query
from services.query.openapi import OPENAPI_PATH
from services.query.openapi import build_document as query_document


def build_openapi() -> dict[str, Any]:
    return query_document(query_routes.ROUTES)


def build_gateway_openapi() -> dict[str, Any]:
    return gateway_openapi.build_document(gateway_routes.ROUTES)


# The structure of an OpenRPC 1.x document, as far as our document uses it (the official
# meta-schema is not shipped in any package here).
_CONTENT_DESCRIPTOR = {
    "type": "object",
    "required": ["name", "schema"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "required": {"type": "boolean"},
        "schema": {"type": "object"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
}
OPENRPC_STRUCTURE = {
    "type": "object",
    "required": ["openrpc", "info", "methods"],
    "properties": {
        "openrpc": {"type": "string", "pattern": r"^1\.\d+\.\d+$"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {
                "title": {"type": "string"},
                "version": {"type": "string"},
            },
        },
        "methods": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "params", "result"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "paramStructure": {"enum": ["by-name", "by-position", "either"]},
                    "params": {"type": "array", "items": _CONTENT_DESCRIPTOR},
                    "result": _CONTENT_DESCRIPTOR,
                    "errors": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                _ERROR,
                                {
                                    "type": "object",
                                    "required": ["$ref"],
                                    "properties": {"$ref": {"type": "string"}},
                                },
                            ]
                        },
                    },
                },
            },
        },
        "components": {
            "type": "object",
            "properties": {
                "schemas": {"type": "object"},
                "errors": {"type": "object", "additionalProperties": _ERROR},
            },
        },
    },
}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("build", [build_openapi, build_gateway_openapi])
def test_openapi_documents_are_valid_openapi_31(build):
    doc = build()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the 3.1 schema
    for ref in _refs(doc):
        _resolve(doc, ref)


def test_openapi_schemas_come_from_the_shared_models():
    schemas = build_openapi()["components"]["schemas"]
    session = schemas["Session"]
    # camelCase wire names, and optional fields absent rather than null
    assert {"sessionId", "acpStatus", "resumeCapabilities"} <= set(
        session["properties"]
    )
    assert session["properties"]["name"] == {"title": "Name", "type": "string"}
    assert "acpError" not in session["required"]
    for name in ("Note", "NoteGroup", "Task", "Workspace", "Error"):
        assert name in schemas
    # request models keep their null (clients may send it)
    assert "NoteWrite" in schemas
    assert "TaskCreate" in schemas


def _served(app) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the app answers (HEAD is GET's twin)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented(doc) -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, item in doc["paths"].items() for method in item
    }


@pytest.mark.parametrize(
    ("create", "table", "build"),
    [
        (create_query, query_routes.ROUTES, build_openapi),
        (create_gateway, gateway_routes.ROUTES, build_gateway_openapi),
    ],
    ids=["query", "gateway"],
)
def test_routes_table_and_openapi_document_list_the_same_routes(
    settings, create, table, build
):
    """Every route the app serves is in its table; every documented one in the document."""
    app = create(settings)
    # the router's canonical form drops a parameter's regex: {path:.+} -> {path}
    tabled = {(r.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.path)) for r in table}
    assert _served(app) == tabled, "a route registered outside the routes table"
    hidden = tabled - set(documented_routes(table))
    assert len(hidden) == len(table) - len(documented_routes(table))
    # only asset files are left out, on purpose
    assert all(path.endswith(("{path}", "{name}")) for _, path in hidden), hidden
    documented = _documented(build())
    assert documented == tabled - hidden
    assert len(table) == len(tabled), "a route is in the table twice"


def test_a_route_without_a_doc_fails_the_build():
    async def handler(request):  # no @api
        raise AssertionError

    with pytest.raises(ValueError, match="declares no @api doc"):
        query_document([*query_routes.ROUTES, web.get("/api/new", handler)])
    assert doc_of(undocumented(handler)) is None


def test_sse_routes_are_documented_as_event_streams():
    paths = build_openapi()["paths"]
    for path in ("/api/sessions/events", "/api/notes/events", "/api/tasks/events"):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"], path
    stream = build_gateway_openapi()["paths"]["/api/acp"]["get"]
    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"400", "404", "429"} <= set(stream["responses"])
    params = {(p["name"], p["in"]) for p in stream["parameters"]}
    assert {("sessionId", "query"), ("Last-Event-ID", "header")} <= params


def test_jsonrpc_post_documents_204_and_transport_refusals():
    post = build_gateway_openapi()["paths"]["/api/acp"]["post"]
    responses = post["responses"]
    assert "content" not in responses["204"]  # notifications only: no body
    for status in ("401", "403", "413", "415", "429"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }, status
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "oneOf": [
            {"$ref": "#/components/schemas/JsonRpcRequest"},
            {"$ref": "#/components/schemas/JsonRpcBatch"},
        ]
    }


@pytest.mark.parametrize("build", [build_openapi, build_gateway_openapi])
def test_bearer_security_scheme_on_api_routes(build):
    doc = build()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/api/"):
                # bearer, or nothing while auth is off
                assert op["security"] == [{"bearer": []}, {}], (method, path)
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            else:
                assert "security" not in op, (method, path)


def test_error_responses_name_error_schema_and_status():
    paths = build_openapi()["paths"]
    get_session = paths["/api/sessions/{session_id}"]["get"]["responses"]
    assert get_session["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "409" in paths["/api/workspaces/{id}"]["delete"]["responses"]
    assert "201" in paths["/api/tasks"]["post"]["responses"]


async def test_openapi_json_is_served(settings, aiohttp_client):
    client = await aiohttp_client(create_query(settings))
    resp = await client.get(OPENAPI_PATH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body == build_openapi()
    validate(body)


async def test_gateway_openapi_json_is_served(settings, aiohttp_client):
    client = await aiohttp_client(create_gateway(settings))
    resp = await client.get(gateway_openapi.OPENAPI_PATH)
    assert resp.status == 200
    assert await resp.json() == build_gateway_openapi()


def test_openrpc_document_structure():
    doc = build_openrpc()
    jsonschema.validate(doc, OPENRPC_STRUCTURE)
    for ref in _refs(doc):
        _resolve(doc, ref)
    # every param schema is itself a valid JSON Schema
    for method in doc["methods"]:
        for param in method["params"]:
            jsonschema.Draft202012Validator.check_schema(param["schema"])


def test_every_registered_method_is_in_the_openrpc_document(settings):
    app = create_gateway(settings)
    registered = set(app[METHODS].methods)
    assert "session/new" in registered
    documented = {m["name"] for m in build_openrpc()["methods"]}
    assert registered - documented == set()
    assert documented - registered == set()


@pytest.mark.parametrize(
    ("method", "param", "required"),
    [
        ("session/new", "workspaceId", True),
        ("session/new", "modeId", False),
        ("session/prompt", "prompt", True),
        ("initialize", "protocolVersion", False),
        ("session/respond_user_input", "toolCallId", True),
        ("session/set_mode", "modeId", True),
    ],
)
def test_openrpc_params_follow_the_method_models(method, param, required):
    doc = build_openrpc()
    (entry,) = [m for m in doc["methods"] if m["name"] == method]
    params = {p["name"]: p for p in entry["params"]}
    assert params[param]["required"] is required


def test_openrpc_error_codes():
    doc = build_openrpc()
    codes = {e["code"] for e in doc["components"]["errors"].values()}
    assert {
        -32700,
        -32600,
        -32601,
        -32602,
        -32603,
        -32000,
        -32002,
        -32004,
        -32010,
    } == codes
    (load,) = [m for m in doc["methods"] if m["name"] == "session/load"]
    assert {"$ref": "#/components/errors/SessionNotFound"} in load["errors"]


async def test_openrpc_json_is_served(settings, aiohttp_client):
    client = await aiohttp_client(create_gateway(settings))
    resp = await client.get(OPENRPC_PATH)
    assert resp.status == 200
    assert await resp.json() == build_openrpc()
