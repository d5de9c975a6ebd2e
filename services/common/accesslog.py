"""The access log: one structured line per request, with the route template and duration.

aiohttp calls the access logger inside the request's task, after the handler, so the
structlog context bound there (request_id by the middleware, session_id by the gateway's
methods) ends up on the line. Probes and scrapes are left out, as they are from metrics.
"""

from __future__ import annotations

import logging

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from services.common.badrequest import REQUEST_ID_KEY, parse_error

ACCESS_LOGGER = logging.getLogger("routa.access")
_log = structlog.stdlib.get_logger("routa.access")
_SKIP = frozenset({"/metrics", "/healthz", "/readyz"})


def _route(request: BaseRequest) -> str:
    """The route template; a request that never reached the router has none."""
    if not isinstance(request, web.Request):
        return "<unmatched>"
    try:
        match_info = request.match_info
    except AssertionError:  # aiohttp asserts it was routed
        return "<unmatched>"
    resource = match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        error = parse_error(request)
        if error is not None:
            # the parser refused it: no method, path or route to speak of
            _log.info(
                "request",
                route="<unparsed>",
                status=response.status,
                duration_ms=round(time * 1000, 3),
                error=error,
                request_id=request.get(REQUEST_ID_KEY),
            )
            return
        if request.path in _SKIP:
            return
        _log.info(
            "request",
            method=request.method,
            route=_route(request),
            status=response.status,
            duration_ms=round(time * 1000, 3),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
