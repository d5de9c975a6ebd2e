"""The published API documents: valid, served, and covering every route and method."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from openapi_spec_validator import validate

from services.gateway.app import create_app as create_gateway
from services.gateway.openrpc import OPENRPC_PATH
from services.gateway.openrpc import build_document as build_openrpc
from services.gateway.rpc import METHODS
from services.query.app import create_app as create_query
from services.query.openapi import OPENAPI_PATH, UNDOCUMENTED_PREFIXES
from services.query.openapi import build_document as build_openapi

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


def test_openapi_document_is_valid_openapi_31():
    doc = build_openapi()
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


def _registered_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or canonical.startswith(UNDOCUMENTED_PREFIXES):
            continue
        routes.add((route.method, canonical))
    return routes


def test_every_query_route_is_in_the_openapi_document(settings):
    app = create_query(settings)
    documented = {
        (method.upper(), path)
        for path, item in build_openapi()["paths"].items()
        for method in item
    }
    registered = _registered_routes(app)
    assert registered, "no routes found: the walk is broken"
    missing = registered - documented
    assert not missing, f"routes missing from {OPENAPI_PATH}: {sorted(missing)}"
    # and the document lists nothing the app does not serve
    assert documented - registered == set()


def test_sse_routes_are_documented_as_event_streams():
    paths = build_openapi()["paths"]
    for path in ("/api/sessions/events", "/api/notes/events", "/api/tasks/events"):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"], path


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
        ("session/prompt", "prompt", False),
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
