"""Requests aiohttp's HTTP parser could not read (bad chunking, Content-Length with
Transfer-Encoding, an oversized header, an unknown method, TLS bytes on the plain port).

aiohttp answers those itself, before any middleware: each connection's `RequestHandler`
makes an error handler for the parser's message, which returns a plain-text 400 from
`handle_error`. aiohttp has no public hook on that path, so the server's connections are
our `JsonErrorConnection`, whose error handler turns the plain text into `{"error"}` like
every other error of ours and leaves the reason on the request for its access line
(accesslog.py). aiohttp's own traceback for it is dropped by a log filter (logging.py):
the access line carries the reason.

An earlier version wrapped the server's request factory instead; that put one more call
on every request's path (1.8% of a warm session list's CPU), where this costs nothing
until the parser refuses something.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web, web_protocol

PARSE_ERROR_KEY = "parse_error"
REQUEST_ID_KEY = "request_id"
# the method of the request aiohttp makes for a message its parser refused
UNPARSED_METHOD = web_protocol.ERROR.method
_MAX_REASON = 200

ErrorHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def reason_of(text: str) -> str:
    """aiohttp's message cut to its first line (the rest is a caret under the bytes)."""
    first = text.strip().splitlines()[0] if text.strip() else "Bad request"
    first = first.rstrip(":").strip()
    if len(first) > _MAX_REASON:
        first = first[:_MAX_REASON] + "…"
    return first


def parse_error(request: web.BaseRequest) -> str | None:
    """Why the parser refused `request`, or None for a request it read."""
    if request.method != UNPARSED_METHOD:
        return None
    reason = request.get(PARSE_ERROR_KEY)
    return reason if isinstance(reason, str) else None


def as_json(request: web.BaseRequest, plain: web.StreamResponse) -> web.StreamResponse:
    """aiohttp's plain-text error answer as `{"error"}`, with a request id."""
    if not isinstance(plain, web.Response) or plain.status < 400:
        return plain
    reason = reason_of(plain.text or "")
    request_id = os.urandom(16).hex()
    request[PARSE_ERROR_KEY] = reason
    request[REQUEST_ID_KEY] = request_id
    response = web.Response(
        status=plain.status,
        body=orjson.dumps({"error": f"Bad request: {reason}"}),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )
    response.force_close()  # as aiohttp's own answer: the stream cannot be trusted
    return response


class JsonErrorConnection(web_protocol.RequestHandler):
    """One HTTP connection whose parser refusals are answered as JSON."""

    __slots__ = ()

    def _make_error_handler(self, err_info: Any) -> ErrorHandler:
        plain = super()._make_error_handler(err_info)

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return as_json(request, await plain(request))

        return handler


class JsonErrorServer(web.Server):
    """A server whose connections are `JsonErrorConnection`s."""

    def __call__(self) -> web_protocol.RequestHandler:
        return JsonErrorConnection(self, loop=self._loop, **self._kwargs)


def shape_parse_errors(server: web.Server) -> None:
    """Make `server` answer its parser's 400s as JSON (call after `AppRunner.setup`,
    before a site starts: each new connection is then one of ours)."""
    # AppRunner builds a plain Server; it has no __slots__ of its own, so the subclass
    # (which adds no state) can take it over in place
    server.__class__ = JsonErrorServer
