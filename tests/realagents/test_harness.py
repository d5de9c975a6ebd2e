"""The realagents harness itself, in the default suite (no agents needed).

The scripted model endpoint must stream the way the real APIs do (a real agent silently
misbehaves otherwise, e.g. `usage_update.used: null` without the cache fields), and a
missing install must fail the suite with the install command, never skip it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.realagents import harness
from tests.realagents.modelserver import API_KEY, ModelServer, Text, Tool


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ModelServer]:
    s = ModelServer(tmp_path / "m.sock")
    await s.start()
    yield s
    await s.close()


async def _post(
    server: ModelServer, path: str, body: dict[str, Any], key: str = API_KEY
) -> tuple[int, bytes]:
    connector = aiohttp.UnixConnector(path=str(server.socket_path))
    headers = {"x-api-key": key, "Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post("http://model" + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


def _sse(raw: bytes) -> list[Any]:
    return [
        orjson.loads(line[6:])
        for line in raw.decode().splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


TOOLS = [{"name": "Read", "input_schema": {"type": "object"}}]


async def test_anthropic_stream_tool_use_then_text(server: ModelServer) -> None:
    server.script(Tool("Read", {"file_path": "/w/a.txt"}), Text("it says hi"))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    body: dict[str, Any] = {
        "model": "m",
        "stream": True,
        "tools": TOOLS,
        "messages": messages,
    }
    status, raw = await _post(server, "/v1/messages?beta=true", body)
    assert status == 200
    events = _sse(raw)
    assert [e["type"] for e in events][:3] == [
        "message_start",
        "content_block_start",
        "ping",
    ]
    usage = events[0]["message"]["usage"]
    assert {"cache_creation_input_tokens", "cache_read_input_tokens"} <= set(usage)
    assert events[1]["content_block"]["type"] == "tool_use"
    partial = "".join(
        e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
    )
    assert orjson.loads(partial) == {"file_path": "/w/a.txt"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-1]["type"] == "message_stop"

    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "hi"}],
    }
    status, raw = await _post(
        server, "/v1/messages", {**body, "messages": [*messages, result]}
    )
    text = "".join(
        e["delta"].get("text", "")
        for e in _sse(raw)
        if e["type"] == "content_block_delta"
    )
    assert text == "it says hi"
    assert server.main_requests()[1].last_tool_result() == "hi"


async def test_openai_stream_tool_calls_usage_and_side_requests(
    server: ModelServer,
) -> None:
    server.script(Tool("read", {"filePath": "/w/a.txt"}))
    title = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "title?"}],
    }
    status, raw = await _post(server, "/v1/chat/completions", title)
    assert status == 200
    assert "Scripted session" in "".join(
        c["choices"][0]["delta"].get("content") or "" for c in _sse(raw) if c["choices"]
    )
    main = {
        **title,
        "tools": [{"type": "function"}],
        "stream_options": {"include_usage": True},
    }
    status, raw = await _post(server, "/v1/chat/completions", main)
    chunks = _sse(raw)
    calls = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    args = "".join(tc[0]["function"].get("arguments", "") for tc in calls if tc)
    assert orjson.loads(args) == {"filePath": "/w/a.txt"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][
        -1
    ] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert [r.main for r in server.requests] == [False, True]


async def test_wrong_key_is_refused_in_the_apis_format(server: ModelServer) -> None:
    status, raw = await _post(server, "/v1/messages", {"messages": []}, key="nope")
    assert status == 401
    assert orjson.loads(raw)["error"]["type"] == "authentication_error"
    status, raw = await _post(server, "/v1/chat/completions", {"messages": []}, key="")
    assert status == 401
    assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"


def test_missing_agents_fail_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(harness, "AGENTS_BIN", tmp_path)
    problem = harness.readiness_problem()
    assert problem is not None
    assert "scripts/install-agents" in problem
    assert "claude-agent-acp" in problem
