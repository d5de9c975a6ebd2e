"""Share links: a token that reads one session, read-only, on both services.

Real Postgres and Redis, the real echo agent, the gateway and the query service as two apps
(each with its own Redis connections), and once as two real processes for the revocation.
No wall-time assertions: waits are polls with generous bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.common.keys import HUB, REVOCATIONS
from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from shared.db import shares as shares_db
from tests.scaleout.support import free_port, start_service, stop, wait_ready
from tests.security.conftest import TOKEN_A, TOKEN_B, bearer, insert_session

WAIT = 30.0  # hang guard only, never a timing assertion
EXPORT = "/api/sessions/{session_id}/export"

Stack = tuple[TestClient, TestClient]  # (gateway, query)


@pytest.fixture
def make_stack(
    make_settings, aiohttp_client, cwd_root
) -> Callable[..., Awaitable[Stack]]:
    async def _make(**overrides: Any) -> Stack:
        query_app = create_query(make_settings(**overrides))
        if not any(
            r.resource is not None and r.resource.canonical == EXPORT
            for r in query_app.router.routes()
        ):
            # the export route lands separately: a stand-in proves the rule goes by the
            # route's name, so it covers export the moment it is registered
            async def export(request):
                return aiohttp.web.Response(text="export")

            query_app.router.add_get(EXPORT, export)
        gw = await aiohttp_client(create_gateway(make_settings(**overrides)))
        query = await aiohttp_client(query_app)
        async with asyncio.timeout(WAIT):
            await gw.app[HUB].connected.wait()
            await gw.app[REVOCATIONS].listening.wait()
            await query.app[REVOCATIONS].listening.wait()
        return gw, query

    return _make


async def rpc(
    gw: TestClient, method: str, params: dict[str, Any], token: str | None = None
) -> aiohttp.ClientResponse:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return await gw.post("/api/acp", json=body, headers=bearer(token) if token else {})


async def echo_session(gw: TestClient, workspace: str, token: str | None = None) -> str:
    """An echo session with one finished turn ("hello shared")."""
    resp = await rpc(gw, "session/new", {"workspaceId": workspace}, token)
    body = await resp.json()
    assert "result" in body, body
    sid = body["result"]["sessionId"]
    resp = await rpc(
        gw, "session/prompt", {"sessionId": sid, "prompt": "hello shared"}, token
    )
    assert (await resp.json())["result"]["stopReason"] == "end_turn"
    return sid


async def create_share(
    query: TestClient, sid: str, token: str | None = None, **body: Any
) -> dict[str, Any]:
    resp = await query.post(
        f"/api/sessions/{sid}/shares", json=body, headers=bearer(token) if token else {}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def status_of(
    client: TestClient, method: str, path: str, token: str | None = None, **kw: Any
) -> int:
    async with client.request(
        method, path, headers=bearer(token) if token else {}, **kw
    ) as resp:
        body = await resp.read()
        if resp.status >= 400:
            assert set(orjson.loads(body)) == {"error"}, body
        return resp.status


class SSE:
    """An open event stream read in the background until the server ends it."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.frames: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                params = orjson.loads(line[5:])["params"]
                self.frames.append(params)
                if "eventId" not in params:
                    self.connected.set()

    def kinds(self) -> list[str]:
        return [f["update"]["sessionUpdate"] for f in self.frames if "eventId" in f]

    async def ended(self) -> None:
        async with asyncio.timeout(WAIT):
            await asyncio.shield(self.task)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self.task
        self.resp.close()


async def open_stream(client: Any, url: str, token: str) -> SSE:
    resp = await client.get(
        url, params={"access_token": token}, timeout=aiohttp.ClientTimeout(total=None)
    )
    assert resp.status == 200, await resp.text()
    stream = SSE(resp)
    async with asyncio.timeout(WAIT):
        await stream.connected.wait()
    return stream


# --- create, list, delete ----------------------------------------------------------------


async def test_create_list_delete(make_stack, pool, workspace_id) -> None:
    _, query = await make_stack(auth="off")
    sid = await insert_session(pool, workspace_id)
    first = await create_share(query, sid)
    assert set(first) == {"share", "token", "url"}
    share = first["share"]
    assert set(share) == {"shareId", "sessionId", "createdAt"}  # no expiresAt: never
    assert share["sessionId"] == sid
    token = first["token"]
    assert token.startswith("routa_share_")
    host = f"{query.server.host}:{query.server.port}"
    assert first["url"] == f"http://{host}/s/{token}"
    second = await create_share(query, sid, expiresInSeconds=3600)
    assert set(second["share"]) == {"shareId", "sessionId", "createdAt", "expiresAt"}
    assert second["share"]["expiresAt"] > second["share"]["createdAt"]
    assert second["token"] != token

    # the table holds the hash only
    rows = await pool.fetch(
        "SELECT * FROM session_shares WHERE session_id = $1", uuid.UUID(sid)
    )
    assert len(rows) == 2
    assert {r["token_hash"] for r in rows} == {
        hashlib.sha256(t.encode()).hexdigest() for t in (token, second["token"])
    }
    assert not any(token in str(dict(r)) for r in rows)

    resp = await query.get(f"/api/sessions/{sid}/shares")
    assert resp.status == 200
    text = await resp.text()
    assert token not in text
    assert second["token"] not in text
    listed = orjson.loads(text)["shares"]
    assert [s["shareId"] for s in listed] == [
        share["shareId"],
        second["share"]["shareId"],
    ]
    assert listed[0] == share

    path = f"/api/sessions/{sid}/shares/{share['shareId']}"
    resp = await query.delete(path)
    assert resp.status == 200
    assert await resp.json() == {"deleted": True}
    assert await status_of(query, "DELETE", path) == 404
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        assert (
            await status_of(query, "DELETE", f"/api/sessions/{sid}/shares/{unknown}")
            == 404
        )
    # a share is deleted only through its own session
    other = await insert_session(pool, workspace_id)
    other_path = f"/api/sessions/{other}/shares/{second['share']['shareId']}"
    assert await status_of(query, "DELETE", other_path) == 404
    resp = await query.get(f"/api/sessions/{sid}/shares")
    assert [s["shareId"] for s in (await resp.json())["shares"]] == [
        second["share"]["shareId"]
    ]

    # unknown sessions
    for missing in (str(uuid.uuid4()), "no-such-session"):
        assert (
            await status_of(query, "POST", f"/api/sessions/{missing}/shares", json={})
            == 404
        )
        assert await status_of(query, "GET", f"/api/sessions/{missing}/shares") == 404
        assert (
            await status_of(
                query, "DELETE", f"/api/sessions/{missing}/shares/{uuid.uuid4()}"
            )
            == 404
        )


BAD_EXPIRIES = (-1, 0, 1.5, 60.0, "60", True, 10**12, 2**63, {"s": 1}, [60])


async def test_bad_expiry_is_400_naming_it(make_stack, pool, workspace_id) -> None:
    _, query = await make_stack(auth="off")
    sid = await insert_session(pool, workspace_id)
    path = f"/api/sessions/{sid}/shares"
    for value in BAD_EXPIRIES:
        resp = await query.post(path, json={"expiresInSeconds": value})
        assert resp.status == 400, value
        assert "expiresInSeconds" in (await resp.json())["error"], value
    assert await status_of(query, "POST", path, json=[1]) == 400
    # no body at all, or null, is a link that never expires
    assert (await query.post(path)).status == 201
    assert (await query.post(path, json={"expiresInSeconds": None})).status == 201
    count = await pool.fetchval(
        "SELECT count(*) FROM session_shares WHERE session_id = $1", uuid.UUID(sid)
    )
    assert count == 2


# --- what a share token reaches -----------------------------------------------------------


def _elsewhere(
    sid: str, other: str, ws: str, share_id: str
) -> list[tuple[Any, str, str]]:
    """(service, method, path) a share token of `sid` must not reach: 'q' or 'g'."""
    return [
        ("q", "GET", "/api/sessions"),
        ("q", "GET", f"/api/sessions?workspaceId={ws}"),
        ("q", "GET", f"/api/sessions/{other}"),
        ("q", "GET", f"/api/sessions/{other}/history"),
        ("q", "GET", f"/api/sessions/{other}/context"),
        ("q", "GET", f"/api/sessions/{other}/export"),
        ("q", "PATCH", f"/api/sessions/{sid}"),
        ("q", "DELETE", f"/api/sessions/{sid}"),
        ("q", "POST", f"/api/sessions/{sid}/fork"),
        ("q", "POST", f"/api/sessions/{sid}/disconnect"),
        ("q", "GET", f"/api/sessions/{sid}/shares"),
        ("q", "POST", f"/api/sessions/{sid}/shares"),
        ("q", "DELETE", f"/api/sessions/{sid}/shares/{share_id}"),
        ("q", "GET", f"/api/sessions/events?workspaceId={ws}"),
        ("q", "GET", f"/api/notes?workspaceId={ws}&sessionId={sid}"),
        ("q", "POST", "/api/notes"),
        ("q", "GET", f"/api/tasks?workspaceId={ws}&sessionId={sid}"),
        ("q", "GET", "/api/workspaces"),
        ("q", "GET", f"/api/workspaces/{ws}"),
        ("q", "GET", "/api/openapi.json"),
        ("g", "GET", f"/api/acp?sessionId={other}&probe=1"),
        ("g", "GET", f"/api/acp?sessionId={other}"),
        ("g", "GET", "/api/acp?probe=1"),
        ("g", "GET", "/api/acp/openrpc.json"),
    ]


async def _post_rpc_forbidden(gw: TestClient, sid: str, share: str) -> None:
    for method, params in (
        ("session/prompt", {"sessionId": sid, "prompt": "from a share"}),
        ("session/cancel", {"sessionId": sid}),
        ("session/new", {"workspaceId": "default"}),
        ("initialize", {}),
    ):
        resp = await rpc(gw, method, params, share)
        assert resp.status == 403, method
        assert set(await resp.json()) == {"error"}


async def test_share_token_reads_only_its_session(
    make_stack, pool, workspace_id
) -> None:
    gw, query = await make_stack(auth="off")
    sid = await echo_session(gw, workspace_id)
    other = await echo_session(gw, workspace_id)
    created = await create_share(query, sid)
    share, share_id = created["token"], created["share"]["shareId"]

    # the four session routes, by header and by access_token
    for suffix in ("", "/history", "/context", "/export"):
        path = f"/api/sessions/{sid}{suffix}"
        assert await status_of(query, "GET", path, share) == 200, path
        resp = await query.get(path, params={"access_token": share})
        assert resp.status == 200, path
    body = await (await query.get(f"/api/sessions/{sid}", headers=bearer(share))).json()
    assert body["session"]["sessionId"] == sid
    history = await (
        await query.get(f"/api/sessions/{sid}/history", headers=bearer(share))
    ).json()
    assert "user_message" in [e["update"]["sessionUpdate"] for e in history["history"]]
    # the stream and its probe
    assert await status_of(gw, "GET", f"/api/acp?sessionId={sid}&probe=1", share) == 204
    stream = await open_stream(gw, f"/api/acp?sessionId={sid}&replay=all", share)
    try:
        assert "user_message" in stream.kinds()
        assert "turn_complete" in stream.kinds()
    finally:
        await stream.close()

    # everything else: 403, with auth off too; without the token it is all open
    events_before = await pool.fetchval(
        "SELECT count(*) FROM session_events WHERE session_id = $1", uuid.UUID(sid)
    )
    clients = {"q": query, "g": gw}
    for service, method, path in _elsewhere(sid, other, workspace_id, share_id):
        kw = (
            {"json": {"workspaceId": workspace_id, "title": "x"}}
            if method == "POST"
            else {}
        )
        assert await status_of(clients[service], method, path, share, **kw) == 403, path
    await _post_rpc_forbidden(gw, sid, share)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1", uuid.UUID(sid)
        )
        == events_before
    )
    assert await status_of(query, "GET", f"/api/sessions/{sid}/shares") == 200
    for path in (
        f"/api/sessions/{other}",
        f"/api/sessions?workspaceId={workspace_id}",
        "/api/workspaces",
    ):
        assert await status_of(query, "GET", path) == 200, path
    assert await status_of(gw, "GET", f"/api/acp?sessionId={other}&probe=1") == 204
    # the share is still there: nothing above revoked it
    assert await status_of(query, "GET", f"/api/sessions/{sid}", share) == 200


async def test_unknown_share_token_is_401_even_with_auth_off(
    make_stack, pool, workspace_id
) -> None:
    gw, query = await make_stack(auth="off")
    sid = await insert_session(pool, workspace_id)
    bogus = shares_db.TOKEN_PREFIX + "not-a-real-one"
    assert await status_of(query, "GET", f"/api/sessions/{sid}", bogus) == 401
    assert await status_of(gw, "GET", f"/api/acp?sessionId={sid}&probe=1", bogus) == 401
    # an ordinary token with auth off is ignored, as before
    assert await status_of(query, "GET", f"/api/sessions/{sid}", "whatever") == 200


async def test_expired_share_is_401_and_its_stream_ends(
    make_stack, pool, workspace_id
) -> None:
    gw, query = await make_stack(auth="off")
    sid = await echo_session(gw, workspace_id)
    # a long enough life to open the stream, then it must end by itself
    long = await create_share(query, sid, expiresInSeconds=5)
    stream = await open_stream(gw, f"/api/acp?sessionId={sid}", long["token"])
    short = await create_share(query, sid, expiresInSeconds=1)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                resp = await query.get(
                    f"/api/sessions/{sid}", headers=bearer(short["token"])
                )
                if resp.status == 401:
                    assert "expired" in (await resp.json())["error"]
                    break
                assert resp.status == 200
                await asyncio.sleep(0.1)
        assert (
            await status_of(
                gw, "GET", f"/api/acp?sessionId={sid}&probe=1", short["token"]
            )
            == 401
        )
        await stream.ended()
        assert (
            await status_of(gw, "GET", f"/api/acp?sessionId={sid}", long["token"])
            == 401
        )
        assert (
            await status_of(query, "GET", f"/api/sessions/{sid}/history", long["token"])
            == 401
        )
    finally:
        await stream.close()
    # listed until revoked, with its expiry
    resp = await query.get(f"/api/sessions/{sid}/shares")
    assert {s["shareId"] for s in (await resp.json())["shares"]} == {
        long["share"]["shareId"],
        short["share"]["shareId"],
    }


async def test_revoke_ends_open_streams_then_401(
    make_stack, pool, workspace_id
) -> None:
    gw, query = await make_stack(auth="off")
    sid = await echo_session(gw, workspace_id)
    doomed = await create_share(query, sid)
    kept = await create_share(query, sid)
    url = f"/api/acp?sessionId={sid}"
    streams = [await open_stream(gw, url, doomed["token"]) for _ in range(2)]
    survivor = await open_stream(gw, url, kept["token"])
    try:
        assert (
            await status_of(query, "GET", f"/api/sessions/{sid}", doomed["token"])
            == 200
        )
        resp = await query.delete(
            f"/api/sessions/{sid}/shares/{doomed['share']['shareId']}"
        )
        assert resp.status == 200
        for stream in streams:
            await stream.ended()
        for path in (f"/api/sessions/{sid}", f"/api/sessions/{sid}/history"):
            assert await status_of(query, "GET", path, doomed["token"]) == 401
        assert await status_of(gw, "GET", f"{url}&probe=1", doomed["token"]) == 401
        assert await status_of(gw, "GET", url, doomed["token"]) == 401
        # the other share's stream is still live: a new turn reaches it
        assert not survivor.task.done()
        resp = await rpc(gw, "session/prompt", {"sessionId": sid, "prompt": "again"})
        assert (await resp.json())["result"]["stopReason"] == "end_turn"
        async with asyncio.timeout(WAIT):
            while survivor.kinds().count("turn_complete") < 2:
                await asyncio.sleep(0.05)
    finally:
        for stream in [*streams, survivor]:
            await stream.close()


async def test_auth_on_with_scoped_tokens(
    make_stack, pool, auth_tokens, two_workspaces
) -> None:
    ws_a, ws_b = two_workspaces
    gw, query = await make_stack(auth_tokens=auth_tokens)
    sid_a = await echo_session(gw, ws_a, TOKEN_A)
    sid_b = await insert_session(pool, ws_b)
    # creating and listing shares is scoped like the other session routes
    assert (
        await status_of(query, "POST", f"/api/sessions/{sid_a}/shares", json={}) == 401
    )
    assert (
        await status_of(query, "GET", f"/api/sessions/{sid_a}/shares", "wrong") == 401
    )
    for method in ("POST", "GET"):
        assert (
            await status_of(
                query, method, f"/api/sessions/{sid_b}/shares", TOKEN_A, json={}
            )
            == 403
        )
    created = await create_share(query, sid_a, TOKEN_A)
    share_path = f"/api/sessions/{sid_a}/shares/{created['share']['shareId']}"
    assert await status_of(query, "DELETE", share_path, TOKEN_B) == 403
    resp = await query.get(f"/api/sessions/{sid_a}/shares", headers=bearer(TOKEN_A))
    assert len((await resp.json())["shares"]) == 1
    # the share token works with auth on, for its session only
    share = created["token"]
    for suffix in ("", "/history", "/context", "/export"):
        assert (
            await status_of(query, "GET", f"/api/sessions/{sid_a}{suffix}", share)
            == 200
        )
    assert (
        await status_of(gw, "GET", f"/api/acp?sessionId={sid_a}&probe=1", share) == 204
    )
    assert await status_of(query, "GET", f"/api/sessions/{sid_b}", share) == 403
    assert (
        await status_of(query, "GET", f"/api/sessions?workspaceId={ws_a}", share) == 403
    )
    assert (
        await status_of(gw, "GET", f"/api/acp?sessionId={sid_b}&probe=1", share) == 403
    )
    await _post_rpc_forbidden(gw, sid_a, share)
    # scoped tokens keep working as before
    assert (
        await status_of(query, "GET", f"/api/sessions?workspaceId={ws_a}", TOKEN_A)
        == 200
    )
    assert await status_of(query, "GET", f"/api/sessions/{sid_b}", TOKEN_A) == 403
    assert await status_of(query, "GET", f"/api/sessions/{sid_b}", TOKEN_B) == 200
    assert (
        await status_of(gw, "GET", f"/api/acp?sessionId={sid_a}&probe=1", TOKEN_A)
        == 204
    )
    # revoked → 401 with auth on too
    assert await status_of(query, "DELETE", share_path, TOKEN_A) == 200
    assert await status_of(query, "GET", f"/api/sessions/{sid_a}", share) == 401


async def test_share_page(make_stack, pool, workspace_id) -> None:
    _gw, query = await make_stack(auth="off")
    sid = await insert_session(pool, workspace_id)
    created = await create_share(query, sid)
    resp = await query.get(f"/s/{created['token']}")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    assert f'data-share-session="{sid}"' in page
    assert '<script src="/static/app.js"' in page
    assert created["token"] not in page  # the page reads it from its own URL
    for bad in ("nope", shares_db.TOKEN_PREFIX + "nope"):
        resp = await query.get(f"/s/{bad}")
        assert resp.status == 404
        assert await resp.json() == {
            "error": "Share link not found, expired or revoked"
        }
    await query.delete(f"/api/sessions/{sid}/shares/{created['share']['shareId']}")
    assert (await query.get(f"/s/{created['token']}")).status == 404


# --- the same across two real processes ---------------------------------------------------


@pytest.fixture
async def processes(settings, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
        "DATA_DIR": str(tmp_path / "data"),
        "AUTH": "off",
        "LOG_LEVEL": "WARNING",
        "DRAIN_GRACE": "1",
        "SHUTDOWN_TIMEOUT": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(
                None,
                [
                    str(Path(__file__).resolve().parents[2]),
                    os.environ.get("PYTHONPATH"),
                ],
            )
        ),
    }
    procs = [
        start_service("services.gateway", "share-gw", free_port(), env, tmp_path),
        start_service("services.query", "share-query", free_port(), env, tmp_path),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for proc in procs:
                await wait_ready(http, proc.url, "/readyz")
        yield {"gateway": procs[0].url, "query": procs[1].url}
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.e2e
async def test_revoke_across_real_processes(processes, workspace_id) -> None:
    gw_url, query_url = processes["gateway"], processes["query"]
    async with aiohttp.ClientSession() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "session/new"}
        async with http.post(
            gw_url + "/api/acp", json={**body, "params": {"workspaceId": workspace_id}}
        ) as resp:
            sid = (await resp.json())["result"]["sessionId"]
        async with http.post(
            query_url + f"/api/sessions/{sid}/shares", json={}
        ) as resp:
            assert resp.status == 201
            created = await resp.json()
        token = created["token"]
        assert created["url"].endswith(f"/s/{token}")
        stream = await open_stream(http, f"{gw_url}/api/acp?sessionId={sid}", token)
        try:
            async with http.delete(
                f"{query_url}/api/sessions/{sid}/shares/{created['share']['shareId']}"
            ) as resp:
                assert resp.status == 200
            await stream.ended()  # the gateway heard the query service over Redis
        finally:
            await stream.close()
        async with http.get(
            f"{gw_url}/api/acp",
            params={"sessionId": sid, "probe": "1"},
            headers=bearer(token),
        ) as resp:
            assert resp.status == 401
        async with http.get(
            f"{query_url}/api/sessions/{sid}", headers=bearer(token)
        ) as resp:
            assert resp.status == 401
