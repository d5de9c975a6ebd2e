"""aiohttp pieces both processes use: error mapping, request ids, JSON bodies and replies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import redis.exceptions
from aiohttp import web

from shared.errors import (
    BadRequest,
    DependencyDown,
    DomainError,
    PayloadTooLarge,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
NUL_MESSAGE = "Invalid input: text must not contain NUL characters (\\u0000)"
REQUEST_ID = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Streams are prepared inside the handler: call this before `prepare`."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


def _status_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "Not found"
    if exc.status == 405:
        return (
            f"Method not allowed: {exc.reason}" if exc.reason else "Method not allowed"
        )
    if exc.status == 413:
        return "Request body too large (limit 1 MiB)"
    return exc.reason or "Error"


def error_to_response(request: web.Request, err: Exception) -> web.Response:
    """Domain errors become {"error": msg} with their status; nothing leaks a traceback.

    An HTTPException that is a redirect or already JSON is re-raised as it is.
    """
    if isinstance(err, DomainError):
        message = getattr(err, "rest_message", None) or err.message
        return error_response(err.http_status, message)
    if isinstance(err, web.HTTPException):
        if err.status < 400 or err.content_type == "application/json":
            raise err
        if err.status == 405:
            return error_response(
                405, f"Method {request.method} not allowed on {request.path}"
            )
        return error_response(err.status, _status_message(err))
    if isinstance(err, ConnectionError | OSError):
        logger.warning(
            "dependency failure on %s %s: %s", request.method, request.path, err
        )
        name = dependency_of(err)
        if name is not None:
            return error_response(503, dependency_down(name, err).message)
        return error_response(503, f"Service unavailable: {err.__class__.__name__}")
    if isinstance(
        err,
        asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError,
    ):
        # a NUL (or another character Postgres text cannot hold) slipped past the checks
        return error_response(400, NUL_MESSAGE)
    name = dependency_of(err)
    if name is not None:
        # a dropped connection surfaces as the driver's own error, not an OSError
        logger.warning(
            "%s failure on %s %s: %r", name, request.method, request.path, err
        )
        return error_response(503, dependency_down(name, err).message)
    logger.error("unhandled error on %s %s", request.method, request.path, exc_info=err)
    return error_response(500, "Internal server error")


async def read_json_body(request: web.Request, *, required: bool = True) -> Any:
    """Parse a JSON body with the contract's rules: 413, 415, 400."""
    content_type = request.headers.get("Content-Type", "")
    if request.body_exists and content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if not (
            mime == "application/json"
            or (mime.startswith("application/") and mime.endswith("+json"))
        ):
            raise UnsupportedMediaType(
                f"Unsupported Content-Type: {mime}; send application/json"
            )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge("Request body too large (limit 1 MiB)")
    body = await read_body_limited(request)
    if not body.strip():
        if required:
            raise BadRequest("Request body is required (JSON object)")
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"Body is not valid JSON: {err}") from err


async def read_body_limited(request: web.Request) -> bytes:
    """Read the body, refusing (413) as soon as it passes 1 MiB, before parsing anything."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge("Request body too large (limit 1 MiB)")
        chunks.append(chunk)
    return b"".join(chunks)


# A lost or refused connection, or a call that timed out: the dependency is down.
POSTGRES_ERRORS = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *POSTGRES_ERRORS,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def dependency_of(err: BaseException) -> str | None:
    """ "Postgres" or "Redis" when `err` is a lost connection to it, else None.

    A refused connect is a bare OSError, so the driver is found in the traceback.
    """
    if not isinstance(err, _CONNECTION_ERRORS):
        return None
    if isinstance(err, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "Postgres"
    if isinstance(err, redis.exceptions.RedisError):
        return "Redis"
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.startswith("asyncpg"):
                return "Postgres"
            if module.startswith("redis"):
                return "Redis"
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return None


def dependency_down(name: str, err: BaseException) -> DependencyDown:
    return DependencyDown(f"{name} unavailable: {err.__class__.__name__}")


@contextlib.contextmanager
def postgres_calls() -> Iterator[None]:
    """A block that talks only to Postgres: any connection failure in it is Postgres's.

    The error middleware (error_to_response) then answers 503 naming Postgres, even for a
    bare timeout whose traceback does not show the driver.
    """
    try:
        yield
    except POSTGRES_ERRORS as err:
        raise dependency_down("Postgres", err) from err
