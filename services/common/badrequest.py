"""Requests aiohttp's HTTP parser could not read (bad chunking, Content-Length with
Transfer-Encoding, an oversized header, an unknown method, TLS bytes on the plain port).

aiohttp answers those itself, before any middleware, with a plain-text 400 built by
`RequestHandler.handle_error`. The one hook it offers on that path is the server's
`request_factory`: for its parse-error message it gets our `UnparsedRequest`, whose
prepare hook turns the plain text into `{"error"}` like every other error of ours, and
whose access line (accesslog.py) says what was wrong. aiohttp's own traceback for it is
dropped by a log filter (logging.py): the access line carries the reason.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from aiohttp import web, web_protocol

PARSE_ERROR_KEY = "parse_error"
REQUEST_ID_KEY = "request_id"
_MAX_REASON = 200


def reason_of(text: str) -> str:
    """aiohttp's message cut to its first line (the rest is a caret under the bytes)."""
    first = text.strip().splitlines()[0] if text.strip() else "Bad request"
    first = first.rstrip(":").strip()
    if len(first) > _MAX_REASON:
        first = first[:_MAX_REASON] + "…"
    return first


class UnparsedRequest(web.BaseRequest):
    """The request object aiohttp makes for a message its parser refused."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if not isinstance(response, web.Response) or response.status < 400:
            return
        reason = reason_of(response.text or "")
        self[PARSE_ERROR_KEY] = reason
        response.body = orjson.dumps({"error": f"Bad request: {reason}"})
        response.content_type = "application/json"
        self[REQUEST_ID_KEY] = os.urandom(16).hex()
        response.headers["X-Request-Id"] = self[REQUEST_ID_KEY]


def shape_parse_errors(server: web.Server) -> None:
    """Make `server` answer its parser's 400s as JSON (call after `AppRunner.setup`)."""
    make = server.request_factory

    def factory(
        message: Any,
        payload: Any,
        protocol: Any,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if message is web_protocol.ERROR:
            return UnparsedRequest(
                message, payload, protocol, writer, task, asyncio.get_running_loop()
            )
        return make(message, payload, protocol, writer, task)

    server.request_factory = factory
