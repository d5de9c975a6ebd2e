"""The access log: one structured line per request, with the route template and duration.

aiohttp calls the access logger inside the request's task, after the handler, so the
structlog context bound there (request_id by the middleware, session_id by the gateway's
methods) ends up on the line. Probes and scrapes are left out, as they are from metrics.
"""

from __future__ import annotations

import logging

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

ACCESS_LOGGER = logging.getLogger("routa.access")
_log = structlog.stdlib.get_logger("routa.access")
_SKIP = frozenset({"/metrics", "/healthz", "/readyz"})


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.path in _SKIP:
            return
        match_info = getattr(request, "match_info", None)
        resource = match_info.route.resource if match_info is not None else None
        route = resource.canonical if resource is not None else "<unmatched>"
        _log.info(
            "request",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(time * 1000, 3),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
