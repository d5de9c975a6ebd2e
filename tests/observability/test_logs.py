"""Structured logs of real processes: JSON lines carrying request_id and session_id, one
line per JSON-RPC call, whole tracebacks, session ids on the query service's lines."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from tests.observability.procs import WAIT, json_lines, service_process, wait_line

pytestmark = pytest.mark.e2e


@pytest.fixture
async def gateway_process(database_url, redis_url, tmp_path):
    """`python -m services.gateway` with LOG_FORMAT=json; yields (base url, log file)."""
    async with service_process(
        "services.gateway", tmp_path, database_url, redis_url
    ) as gw:
        yield gw.base, gw.log


async def _rpc(http, base, request_id, method, params):
    async with http.post(
        f"{base}/api/acp",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        headers={"X-Request-Id": request_id},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == request_id
        return await resp.json()


async def test_json_logs_carry_request_and_session_ids(gateway_process, workspace_id):
    base, log = gateway_process
    new_id, prompt_id = f"req-{uuid.uuid4().hex}", f"req-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        created = await _rpc(
            http, base, new_id, "session/new", {"workspaceId": workspace_id}
        )
        sid = created["result"]["sessionId"]
        # the reply may be a stop reason or an agent error: either way it is logged
        await _rpc(
            http, base, prompt_id, "session/prompt", {"sessionId": sid, "prompt": "hi"}
        )

    def matching(request_id: str) -> list[dict]:
        return [
            line
            for line in json_lines(log)
            if line.get("request_id") == request_id
            and line.get("session_id") == sid
            and line.get("event") == "request"
        ]

    async with asyncio.timeout(WAIT):
        while not (matching(new_id) and matching(prompt_id)):
            await asyncio.sleep(0.05)
    line = matching(prompt_id)[0]
    assert line["route"] == "/api/acp"
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert {"timestamp", "level", "event"} <= set(line)
    # probes stay out of the access log
    assert not any(entry.get("route") == "/readyz" for entry in json_lines(log))


async def test_one_line_per_json_rpc_call(gateway_process, workspace_id):
    """Method, code and duration per call: info on success, warning on an error."""
    base, log = gateway_process
    request_id = f"req-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        created = await _rpc(
            http, base, request_id, "session/new", {"workspaceId": workspace_id}
        )
        sid = created["result"]["sessionId"]
        failed = await _rpc(
            http,
            base,
            request_id,
            "session/prompt",
            {"sessionId": sid, "prompt": "/fail"},
        )
        assert failed["error"]["code"] == -32000
        missing = await _rpc(http, base, request_id, "no/such/method", {})
        assert missing["error"]["code"] == -32601
        # a batch: each member its own line, each with its own session id (or none)
        async with http.post(
            f"{base}/api/acp",
            json=[
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "session/set_mode",
                    "params": {"sessionId": sid, "modeId": "no-such-mode"},
                },
                {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {}},
            ],
            headers={"X-Request-Id": request_id},
        ) as resp:
            assert resp.status == 200

    def calls() -> list[dict]:
        return [
            line
            for line in json_lines(log)
            if line.get("event") == "rpc" and line.get("request_id") == request_id
        ]

    async with asyncio.timeout(WAIT):
        while len(calls()) < 5:
            await asyncio.sleep(0.05)
    new, prompt, unknown, set_mode, init = calls()
    assert (new["method"], new["code"], new["level"]) == ("session/new", 0, "info")
    assert new["session_id"] == sid
    assert isinstance(new["duration_ms"], float | int)
    assert (prompt["method"], prompt["code"], prompt["level"]) == (
        "session/prompt",
        -32000,
        "warning",
    )
    assert prompt["session_id"] == sid
    assert "asked to fail" in prompt["error"]
    assert prompt["duration_ms"] >= 0
    assert (unknown["method"], unknown["code"], unknown["level"]) == (
        "no/such/method",
        -32601,
        "warning",
    )
    assert "session_id" not in unknown
    assert set_mode["session_id"] == sid
    assert set_mode["level"] == "warning"
    assert (init["method"], init["code"]) == ("initialize", 0)
    assert "session_id" not in init  # not the batch's previous member's


async def test_an_unexpected_exception_is_logged_with_its_traceback(
    database_url, redis_url, tmp_path
):
    async with (
        service_process(
            "tests.observability.raising_gateway", tmp_path, database_url, redis_url
        ) as gw,
        aiohttp.ClientSession() as http,
    ):
        reply = await _rpc(http, gw.base, f"req-{uuid.uuid4().hex}", "test/raise", {})
        assert reply["error"] == {"code": -32603, "message": "Internal error"}
        line = await wait_line(
            gw.log, lambda line: "unhandled error" in str(line.get("event"))
        )
    assert line["level"] == "error"
    trace = line["exception"]
    assert isinstance(trace, str)
    assert trace.startswith("Traceback (most recent call last):")
    assert "in raise_from_deep_inside" in trace  # the frame that raised
    assert trace.rstrip().endswith("RuntimeError: a bug for the log test")
    assert "exc_info" not in line
    assert "<traceback object" not in gw.log.read_text()


async def test_query_lines_carry_the_session_id(database_url, redis_url, tmp_path):
    sid = str(uuid.uuid4())
    request_id = f"req-{uuid.uuid4().hex}"
    async with (
        service_process("services.query", tmp_path, database_url, redis_url) as query,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(
            f"{query.base}/api/sessions/{sid}", headers={"X-Request-Id": request_id}
        ) as resp:
            assert resp.status == 404
        line = await wait_line(
            query.log,
            lambda line: (
                line.get("request_id") == request_id and line.get("event") == "request"
            ),
        )
    assert line["session_id"] == sid
    assert line["route"] == "/api/sessions/{session_id}"
