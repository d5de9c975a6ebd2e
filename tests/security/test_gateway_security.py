"""Auth, limits and agent confinement on the gateway."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from services.common.keys import HUB
from services.gateway.app import create_app
from tests.security.conftest import TOKEN_A, TOKEN_ALL, bearer, insert_session

PROBE = Path(__file__).parent / "agents" / "probe_agent.py"
SECRETS = {
    "DATABASE_URL": "postgresql://secret@db/x",
    "AUTH_TOKENS": "leak-me=*",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
}


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(**overrides):
        client = await aiohttp_client(create_app(make_settings(**overrides)))
        async with asyncio.timeout(10):
            await client.app[HUB].connected.wait()
        return client

    return _make


async def rpc(client, method, params=None, token=None, **kw):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return await client.post(
        "/api/acp", json=body, headers=bearer(token) if token else {}, **kw
    )


async def result(client, method, params=None, token=None):
    resp = await rpc(client, method, params, token)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_status(pool, sid: str, wanted: set[str]) -> str:
    async with asyncio.timeout(20):
        while True:
            value = await pool.fetchval(
                "SELECT acp_status FROM sessions WHERE session_id = $1", uuid.UUID(sid)
            )
            if value in wanted:
                return value
            await asyncio.sleep(0.05)


async def test_gateway_auth_401_403_200(make_gw, pool, auth_tokens, two_workspaces):
    ws_a, ws_b = two_workspaces
    gw = await make_gw(auth_tokens=auth_tokens)
    sid_b = await insert_session(pool, ws_b)
    sid_a = await insert_session(pool, ws_a)
    assert (await gw.get("/healthz")).status == 200
    resp = await rpc(gw, "initialize")
    assert resp.status == 401
    assert set(await resp.json()) == {"error"}
    assert (await rpc(gw, "initialize", token="nope")).status == 401
    assert (await rpc(gw, "initialize", token=TOKEN_A)).status == 200
    # transport-level 403 for another workspace, by workspaceId or by session id
    for method, params in (
        ("session/new", {"workspaceId": ws_b}),
        ("session/prompt", {"sessionId": sid_b, "prompt": "hi"}),
        ("session/cancel", {"sessionId": sid_b}),
    ):
        resp = await rpc(gw, method, params, TOKEN_A)
        assert resp.status == 403, method
        assert set(await resp.json()) == {"error"}
    # a batch with one member outside the scope runs nothing
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "session/cancel",
            "params": {"sessionId": sid_a},
        },
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "session/cancel",
            "params": {"sessionId": sid_b},
        },
    ]
    assert (
        await gw.post("/api/acp", json=batch, headers=bearer(TOKEN_A))
    ).status == 403
    # the event stream: header or access_token (EventSource)
    assert (await gw.get(f"/api/acp?sessionId={sid_a}&probe=1")).status == 401
    path = f"/api/acp?sessionId={sid_b}&probe=1&access_token={TOKEN_A}"
    assert (await gw.get(path)).status == 403
    assert (
        await gw.get(f"/api/acp?sessionId={sid_a}&probe=1&access_token={TOKEN_A}")
    ).status == 204
    assert (
        await gw.get(f"/api/acp?sessionId={sid_b}&probe=1", headers=bearer(TOKEN_ALL))
    ).status == 204


async def test_rate_limit_then_recovery(make_gw, auth_tokens):
    gw = await make_gw(auth_tokens=auth_tokens, rate_limit=5, rate_limit_burst=3)
    statuses = [(await rpc(gw, "initialize", token=TOKEN_A)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    resp = await rpc(gw, "initialize", token=TOKEN_A)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert "error" in await resp.json()
    # another token has its own bucket; health stays open
    assert (await rpc(gw, "initialize", token=TOKEN_ALL)).status == 200
    assert (await gw.get("/healthz")).status == 200
    async with asyncio.timeout(10):
        while (await rpc(gw, "initialize", token=TOKEN_A)).status != 200:
            await asyncio.sleep(0.1)


async def test_prompt_body_and_subscriber_limits(make_gw, pool, workspace_id):
    gw = await make_gw(max_prompt_bytes=1024, max_subscribers=2)
    sid = await insert_session(pool, workspace_id)
    body = await result(gw, "session/prompt", {"sessionId": sid, "prompt": "x" * 2000})
    assert body["error"]["code"] == -32602
    assert "prompt" in body["error"]["message"]
    streams = [await gw.get(f"/api/acp?sessionId={sid}") for _ in range(2)]
    assert all(s.status == 200 for s in streams)
    over = await gw.get(f"/api/acp?sessionId={sid}")
    assert over.status == 429
    assert "error" in await over.json()
    streams[0].close()
    async with asyncio.timeout(10):
        while gw.app[HUB].subscriber_count(sid) >= 2:
            await asyncio.sleep(0.02)
    again = await gw.get(f"/api/acp?sessionId={sid}")
    assert again.status == 200
    again.close()
    streams[1].close()

    async def chunks():  # no Content-Length: refused while reading
        for _ in range(17):
            yield b" " * 65536

    resp = await gw.post(
        "/api/acp", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "error" in await resp.json()
    assert (await gw.get("/healthz")).status == 200


def _custom(workspace_id: str, *args: str) -> dict:
    return {
        "workspaceId": workspace_id,
        "provider": "custom",
        "customCommand": sys.executable,
        "customArgs": [str(PROBE), *args],
    }


async def test_agent_env_has_no_service_secrets(
    make_gw, pool, workspace_id, monkeypatch
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    # AUTH_TOKENS is in the environment now: keep auth off for this app explicitly
    gw = await make_gw(allow_custom_commands=True, auth_tokens=None)
    meta = "a;b && $(touch /tmp/x) | `id`"
    new = await result(gw, "session/new", _custom(workspace_id, meta))
    sid = new["result"]["sessionId"]
    assert await wait_status(pool, sid, {"ready", "error"}) == "ready"
    body = await result(gw, "session/prompt", {"sessionId": sid, "prompt": "env"})
    assert body["result"]["stopReason"] == "end_turn"
    history = await pool.fetch(
        "SELECT payload FROM session_events WHERE session_id = $1 ORDER BY event_id",
        uuid.UUID(sid),
    )
    texts = [
        orjson.loads(r["payload"])["update"].get("content", {}).get("text", "")
        for r in history
    ]
    report = orjson.loads(next(t for t in texts if t.startswith("{")))
    for name, value in SECRETS.items():
        assert name not in report["env"]
        assert all(value not in v for v in report["env"].values())
    # no shell: the metacharacters reached the agent verbatim as one argument
    assert report["argv"][1:] == [meta]


async def test_custom_command_gate_and_cwd_root(make_gw, workspace_id, tmp_path):
    gw = await make_gw()
    body = await result(gw, "session/new", _custom(workspace_id))
    assert body["error"]["code"] == -32602
    assert "customCommand" in body["error"]["message"]
    outside = await result(
        gw, "session/new", {"workspaceId": workspace_id, "cwd": str(tmp_path)}
    )
    assert outside["error"]["code"] == -32602
    assert "cwd" in outside["error"]["message"]


async def test_huge_stdout_line_errors_the_session_only(make_gw, pool, workspace_id):
    gw = await make_gw(allow_custom_commands=True, agent_max_line=64 * 1024)
    sid = (await result(gw, "session/new", _custom(workspace_id)))["result"][
        "sessionId"
    ]
    other = (await result(gw, "session/new", _custom(workspace_id)))["result"][
        "sessionId"
    ]
    assert await wait_status(pool, sid, {"ready", "error"}) == "ready"
    assert await wait_status(pool, other, {"ready", "error"}) == "ready"
    body = await result(
        gw, "session/prompt", {"sessionId": sid, "prompt": "huge 200000"}
    )
    assert body["error"]["code"] == -32000
    assert await wait_status(pool, sid, {"error"}) == "error"
    error = await pool.fetchval(
        "SELECT acp_error FROM sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    assert error  # "Agent closed its connection" (the warning log names the line limit)
    # the gateway and another session go on
    assert (await gw.get("/healthz")).status == 200
    ok = await result(gw, "session/prompt", {"sessionId": other, "prompt": "huge 1000"})
    assert ok["result"]["stopReason"] == "end_turn"
