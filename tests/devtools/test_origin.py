"""The dev origin routes each path family to its backend and streams without buffering."""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp import web
from yarl import URL

from services.devtools.embedded import free_port
from services.devtools.origin import create_origin_app
from services.devtools.upstreams import Backend, Upstreams

SSE_RELEASE = web.AppKey("sse_release", asyncio.Queue)


def fake_backend(name: str) -> web.Application:
    """Answers with its own name and what it saw; /api/acp GET streams SSE on command."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SSE_RELEASE] = asyncio.Queue()

    async def echo(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/api/acp":
            return await sse(request)
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.raw_path,
                "bodyLength": len(body),
                "lastEventId": request.headers.get("Last-Event-ID"),
                "requestId": request.headers.get("X-Request-Id"),
            },
            headers={"X-Request-Id": request.headers.get("X-Request-Id", "none")},
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        queue = request.app[SSE_RELEASE]
        while (frame := await queue.get()) is not None:
            await resp.write(frame)
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def backends(aiohttp_server):
    gateway = await aiohttp_server(fake_backend("gateway"))
    query = await aiohttp_server(fake_backend("query"))
    return gateway, query


@pytest.fixture
async def origin(aiohttp_client, backends):
    gateway, query = backends
    upstreams = Upstreams(
        Backend("gateway", URL(str(gateway.make_url("/")).rstrip("/"))),
        Backend("query", URL(str(query.make_url("/")).rstrip("/"))),
    )
    return await aiohttp_client(create_origin_app(upstreams))


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/acp", "gateway"),
        ("GET", "/api/acp/openrpc.json", "gateway"),
        ("GET", "/api/acpx", "query"),
        ("GET", "/api/sessions?workspaceId=a%20b&limit=5", "query"),
        ("DELETE", "/api/sessions/abc", "query"),
        ("GET", "/api/notes/n1", "query"),
        ("GET", "/api/tasks", "query"),
        ("GET", "/api/workspaces", "query"),
        ("GET", "/api/openapi.json", "query"),
        ("GET", "/", "query"),
        ("GET", "/assets/app.js", "query"),
    ],
)
async def test_routes_each_path_family(origin, method, path, expected):
    resp = await origin.request(method, path, data=b"{}" if method == "POST" else None)
    assert resp.status == 200
    seen = await resp.json()
    assert seen["backend"] == expected
    assert seen["path"] == path
    assert seen["method"] == method


async def test_passes_request_headers_and_body(origin):
    body = b"x" * 300_000
    resp = await origin.post(
        "/api/acp",
        data=body,
        headers={"Last-Event-ID": "41", "X-Request-Id": "req-7"},
    )
    seen = await resp.json()
    assert seen["bodyLength"] == len(body)
    assert seen["lastEventId"] == "41"
    assert seen["requestId"] == "req-7"
    assert resp.headers["X-Request-Id"] == "req-7"


async def test_backend_body_limit_answers_through_origin(origin):
    resp = await origin.post("/api/notes", data=io.BytesIO(b"x" * (2 * 1024 * 1024)))
    assert resp.status == 413


async def test_sse_frames_arrive_one_by_one(origin, backends):
    gateway, _ = backends
    release = gateway.app[SSE_RELEASE]
    async with asyncio.timeout(10):
        resp = await origin.get("/api/acp?sessionId=s1")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        for n in range(3):
            frame = f"id: {n}\ndata: frame-{n}\n\n".encode()
            await release.put(frame)
            # the next frame is only released after this one came through the origin
            assert await resp.content.readuntil(b"\n\n") == frame
        await release.put(None)
        assert await resp.content.read() == b""


async def test_backend_down_is_502_naming_it(aiohttp_client, backends):
    _, query = backends
    upstreams = Upstreams(
        Backend("gateway", URL(f"http://127.0.0.1:{free_port()}")),
        Backend("query", URL(str(query.make_url("/")).rstrip("/"))),
    )
    client = await aiohttp_client(create_origin_app(upstreams))
    resp = await client.post("/api/acp", json={})
    assert resp.status == 502
    assert await resp.json() == {"error": "upstream gateway unavailable"}
    # the other backend is still served
    assert (await client.get("/api/sessions")).status == 200
    health = await client.get("/healthz")
    assert health.status == 503
    assert "gateway" in (await health.json())["error"]


async def test_healthz_is_the_origins_own(origin):
    resp = await origin.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"ok": True, "service": "origin"}
