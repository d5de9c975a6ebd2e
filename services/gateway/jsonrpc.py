"""`POST /api/acp`: the JSON-RPC 2.0 envelope.

Parses requests and batches, dispatches each through the method registry of rpc.py and turns
exceptions into error objects. `dispatch` / `dispatch_bytes` are the one entry point every
transport uses (HTTP here, the Redis commands stream, forwarding between gateways), so they
all get exactly the same semantics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from services.common import rpcjson
from services.common.apidoc import api, ref
from services.common.auth import allowed_workspaces, check_rpc_scope
from services.common.http import (
    MAX_BODY_BYTES,
    NUL_MESSAGE,
    dependency_down,
    dependency_of,
    read_body_limited,
)
from services.common.keys import METRICS
from services.gateway.keys import METHODS
from services.gateway.rpc import MethodRegistry, RpcCall
from shared.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    DomainError,
    PayloadTooLarge,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)
_rpc_log = structlog.stdlib.get_logger("routa.rpc")

PROTOCOL_VERSION = 1
AGENT_INFO = {"name": "routa-py", "version": "0.1.0"}

_NO_ID: Any = object()  # the request carried no `id`: a notification


class _Invalid(Exception):
    """The envelope itself is wrong (-32600 / -32602 before any method runs)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_object(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": error}


def _valid_id(value: Any) -> bool:
    # bool is an int in Python but not a JSON-RPC id
    return (
        value is None
        or (isinstance(value, str | int | float) and not isinstance(value, bool))
        or rpcjson.is_literal_id(value)
    )


def _registry(app: web.Application) -> MethodRegistry:
    registry = app.get(METHODS)
    return registry if registry is not None else MethodRegistry()


def _count(app: web.Application, method: str, code: int) -> None:
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.jsonrpc_calls.labels(method, str(code)).inc()


def _record(
    app: web.Application,
    method: str,
    result: _Ok | _Invalid | DomainError,
    seconds: float,
    forwarded: bool,
) -> None:
    """One call's metrics and its log line: method, code, duration (and session_id,
    bound by the method, through the log context). A call forwarded to its session's
    owner is logged on both instances; the owner's line says `forwarded`."""
    if isinstance(result, _Ok):
        code, message = 0, None
    elif isinstance(result, DomainError):
        code, message = result.jsonrpc_code, result.message
    else:
        code, message = result.code, result.message
    known = _registry(app).get(method) is not None
    metrics = app.get(METRICS)
    if metrics is not None:
        # a label per known method only: a client cannot mint series
        metrics.observe_rpc(method if known else "<unknown>", code, seconds)
    fields: dict[str, Any] = {
        "method": method if known else method[:100],
        "code": code,
        "duration_ms": round(seconds * 1000, 3),
    }
    if forwarded:
        fields["forwarded"] = True
    if code == 0:
        _rpc_log.info("rpc", **fields)
    else:
        _rpc_log.warning("rpc", error=message, **fields)


async def _dispatch_one(
    app: web.Application,
    request: Any,
    allowed_workspaces: frozenset[str] | None,
    forwarded: bool,
) -> dict[str, Any] | None:
    """One request object → its reply, or None for a notification."""
    if not isinstance(request, dict):
        return error_object(
            None, INVALID_REQUEST, "Invalid Request: expected a JSON object"
        )
    id_ = request.get("id", _NO_ID)
    if id_ is not _NO_ID and not _valid_id(id_):
        return error_object(
            None,
            INVALID_REQUEST,
            "Invalid Request: id must be a string, number or null",
        )
    reply_id = None if id_ is _NO_ID else id_
    method = request.get("method")
    try:
        if request.get("jsonrpc") != "2.0":
            raise _Invalid(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
        if "method" not in request:
            raise _Invalid(INVALID_REQUEST, 'Invalid Request: "method" is missing')
        if not isinstance(method, str):
            raise _Invalid(
                INVALID_REQUEST, 'Invalid Request: "method" must be a string'
            )
    except _Invalid as err:
        # An invalid request is answered even without an id (JSON-RPC 2.0).
        _count(app, "<invalid>", err.code)
        return error_object(reply_id, err.code, err.message)

    # a batch member does not lend its session_id to the log lines of the next
    structlog.contextvars.unbind_contextvars("session_id")
    start = time.perf_counter()
    result = await _execute(app, method, request, allowed_workspaces, forwarded)
    _record(app, method, result, time.perf_counter() - start, forwarded)
    if id_ is _NO_ID:
        return None
    if isinstance(result, _Invalid):
        return error_object(reply_id, result.code, result.message)
    if isinstance(result, DomainError):
        return error_object(reply_id, result.jsonrpc_code, result.message, result.data)
    return {"jsonrpc": "2.0", "id": reply_id, "result": result.value}


class _Ok:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


async def _execute(
    app: web.Application,
    method: str,
    request: dict[str, Any],
    allowed_workspaces: frozenset[str] | None,
    forwarded: bool,
) -> _Ok | _Invalid | DomainError:
    """Run the method; every failure becomes a value so notifications can drop it.

    The caller times, counts and logs it (`_record`).
    """
    handler = _registry(app).get(method)
    if handler is None:
        return _Invalid(METHOD_NOT_FOUND, f"Method not found: {method}")
    params = request.get("params")
    if params is None:
        params = {}
    elif isinstance(params, list):
        return _Invalid(INVALID_PARAMS, "params must be an object (named params)")
    elif not isinstance(params, dict):
        return _Invalid(INVALID_PARAMS, "params must be an object")
    call = RpcCall(
        app=app,
        method=method,
        params=params,
        allowed_workspaces=allowed_workspaces,
        forwarded=forwarded,
    )
    try:
        value = await handler(call)
    except DomainError as err:
        return err
    except (
        asyncpg.CharacterNotInRepertoireError,
        asyncpg.UntranslatableCharacterError,
    ):
        # a NUL (or another character Postgres text cannot hold) in some param
        return _Invalid(INVALID_PARAMS, f"Invalid params: {NUL_MESSAGE}")
    except Exception as err:
        dependency = dependency_of(err)
        if dependency is not None:
            # Postgres or Redis is down: -32603 with a message naming it
            logger.warning("%s failure in %s: %r", dependency, method, err)
            return dependency_down(dependency, err)
        # Logged once here, with the traceback; the client only sees -32603.
        logger.exception("unhandled error in JSON-RPC method %s", method)
        return _Invalid(INTERNAL_ERROR, "Internal error")
    return _Ok(value)


async def dispatch(
    app: web.Application,
    payload: Any,
    *,
    allowed_workspaces: frozenset[str] | None = None,
    forwarded: bool = False,
) -> Any | None:
    """A parsed request or batch → the reply object or list; None when nothing is answered.

    Batch members run one after another, so side effects happen in batch order.
    """
    if isinstance(payload, list):
        if not payload:
            return error_object(None, INVALID_REQUEST, "Invalid Request: empty batch")
        replies = []
        for member in payload:
            reply = await _dispatch_one(app, member, allowed_workspaces, forwarded)
            if reply is not None:
                replies.append(reply)
        return replies or None
    return await _dispatch_one(app, payload, allowed_workspaces, forwarded)


def parse_error() -> dict[str, Any]:
    return error_object(None, PARSE_ERROR, "Parse error: body is not valid JSON")


async def dispatch_bytes(
    app: web.Application,
    raw: bytes,
    *,
    allowed_workspaces: frozenset[str] | None = None,
    forwarded: bool = False,
) -> bytes | None:
    """Raw JSON → encoded reply (None for notifications); bad JSON → -32700 with id null."""
    try:
        # a big or odd numeric id comes back as written (rpcjson)
        payload = rpcjson.loads(raw) if raw.strip() else _NO_ID
    except ValueError:
        payload = _NO_ID
    if payload is _NO_ID:
        return orjson.dumps(parse_error())
    reply = await dispatch(
        app, payload, allowed_workspaces=allowed_workspaces, forwarded=forwarded
    )
    if reply is None:
        return None
    try:
        return orjson.dumps(reply)
    except TypeError:
        logger.exception("JSON-RPC result could not be encoded")
        id_ = reply.get("id") if isinstance(reply, dict) else None
        return orjson.dumps(error_object(id_, INTERNAL_ERROR, "Internal error"))


def _check_content_type(request: web.Request) -> None:
    """No Content-Type = JSON; application/json and application/*+json; else 415."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    ):
        return
    raise UnsupportedMediaType(
        f"Unsupported Content-Type: {mime}; send application/json"
    )


@api(
    "JSON-RPC 2.0: one call or a batch (methods in /api/acp/openrpc.json)",
    "acp",
    {"oneOf": [ref("JsonRpcResponse"), ref("JsonRpcResponses")]},
    (413, 415),
    (),
    {"oneOf": [ref("JsonRpcRequest"), ref("JsonRpcBatch")]},
    also={204: ""},
    description=(
        "Always HTTP 200 with JSON-RPC results and errors (a parse error is -32700), "
        "except 204 with no body when every call was a notification (no `id`), and "
        "the transport refusals: 401/403 auth, 413 body over 1 MiB, 415 a "
        "Content-Type other than application/json, 429 rate limited (Retry-After)."
    ),
)
async def handle_post(request: web.Request) -> web.StreamResponse:
    """Transport refusals (413/415) are HTTP errors; everything past them is HTTP 200/204."""
    _check_content_type(request)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge("Request body too large (limit 1 MiB)")
    raw = await read_body_limited(request)
    # auth: a member outside the token's workspaces is HTTP 403 before any runs
    await check_rpc_scope(request, raw)
    reply = await dispatch_bytes(
        request.app, raw, allowed_workspaces=allowed_workspaces(request)
    )
    if reply is None:
        return web.Response(status=204)
    return web.Response(body=reply, content_type="application/json")


async def initialize(call: RpcCall) -> dict[str, Any]:
    """ACP `initialize`: what this gateway speaks."""
    return {
        "protocolVersion": PROTOCOL_VERSION,
        "agentCapabilities": {"loadSession": True},
        "agentInfo": dict(AGENT_INFO),
    }
