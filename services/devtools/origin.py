"""The dev-only origin on :3000 when nginx is absent: routes by path, holds no logic.

Streams both ways without buffering: request bodies go upstream as they arrive, response
bodies (SSE included) come back chunk by chunk as the backend writes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict
from yarl import URL

from services.common.http import json_response, stamp_request_id
from services.devtools.keys import CLIENT, UPSTREAMS
from services.devtools.upstreams import Backend, Upstreams

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the proxy rewrites itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


HEALTH_TIMEOUT = 1.0


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (k, v)
        for k, v in request.headers.items()
        if k.lower() not in HOP_BY_HOP and k.lower() != "host"
    )
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def proxy(request: web.Request) -> web.StreamResponse:
    backend = request.app[UPSTREAMS].for_path(request.path)
    target = URL(str(backend.url) + request.raw_path, encoded=True)
    session = request.app[CLIENT]
    try:
        upstream = await session.request(
            request.method,
            target,
            headers=_request_headers(request),
            data=_body(request) if request.body_exists else None,
            allow_redirects=False,
            auto_decompress=False,
        )
    except (ClientError, OSError):
        return json_response(
            {"error": f"upstream {backend.name} unavailable"}, status=502
        )
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        stamp_request_id(request, response)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (ClientError, ConnectionResetError):
            # backend or client left mid-stream; nothing more can be said on this response
            return response
        await response.write_eof()
    return response


async def _backend_up(session: ClientSession, backend: Backend) -> bool:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            resp = await session.get(backend.url / "healthz")
            async with resp:
                return resp.status == 200
    except (ClientError, OSError, TimeoutError):
        return False


async def healthz(request: web.Request) -> web.Response:
    """The origin's own health: 200 once every backend answers its /healthz."""
    upstreams = request.app[UPSTREAMS]
    session = request.app[CLIENT]
    results = await asyncio.gather(*(_backend_up(session, b) for b in upstreams.all()))
    down = [b.name for b, up in zip(upstreams.all(), results, strict=True) if not up]
    if down:
        return json_response(
            {"error": f"backend unavailable: {', '.join(down)}"}, status=503
        )
    return json_response({"ok": True, "service": "origin"})


def create_origin_app(
    upstreams: Upstreams, *, proxy_all: bool = True
) -> web.Application:
    """The router; with `proxy_all=False` only /healthz (what nginx delegates to us)."""
    app = web.Application()
    app[UPSTREAMS] = upstreams

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        # no total timeout: SSE responses stay open for hours
        session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        app[CLIENT] = session
        yield
        await session.close()

    app.cleanup_ctx.append(client_ctx)
    app.router.add_get("/healthz", healthz)
    if proxy_all:
        app.router.add_route("*", "/{tail:.*}", proxy)
    return app
