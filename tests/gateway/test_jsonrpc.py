"""POST /api/acp: the JSON-RPC envelope, batches, notifications and transport refusals."""

from __future__ import annotations

import io

import orjson
import pytest

from services.gateway import jsonrpc
from services.gateway.keys import METHODS
from services.gateway.rpc import RpcCall
from shared.errors import AgentError


@pytest.fixture
async def rpc(make_gateway, aiohttp_client):
    """A gateway with two test methods: `test/record` (appends params.v) and `test/fail`."""
    app = make_gateway()
    calls: list = []

    async def record(call: RpcCall):
        calls.append(call.params.get("v"))
        return {"v": call.params.get("v")}

    async def fail(call: RpcCall):
        if call.params.get("how") == "domain":
            raise AgentError("agent said no", data={"agentError": {"code": 1}})
        raise RuntimeError("secret internals")

    app[METHODS].add("test/record", record)
    app[METHODS].add("test/fail", fail)
    client = await aiohttp_client(app)
    client.calls = calls
    return client


async def post(client, body, **kwargs):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = kwargs.pop("headers", {"Content-Type": "application/json"})
    return await client.post("/api/acp", data=data, headers=headers, **kwargs)


async def reply(client, body, **kwargs):
    resp = await post(client, body, **kwargs)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_initialize(rpc) -> None:
    body = await reply(rpc, {"jsonrpc": "2.0", "id": 1, "method": "initialize"})
    assert body == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "protocolVersion": 1,
            "agentCapabilities": {"loadSession": True},
            "agentInfo": {"name": "routa-py", "version": "0.1.0"},
        },
    }


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,", b'{"jsonrpc":"2.0"'])
async def test_parse_error_has_null_id(rpc, raw) -> None:
    body = await reply(rpc, raw)
    assert body["id"] is None
    assert body["error"]["code"] == -32700
    assert body["jsonrpc"] == "2.0"


@pytest.mark.parametrize(
    ("request_", "reply_id", "words"),
    [
        (5, None, "object"),
        ("x", None, "object"),
        ({"jsonrpc": "2.0", "id": 7}, 7, "method"),
        ({"jsonrpc": "2.0", "id": "a", "method": 12}, "a", "method"),
        ({"jsonrpc": "1.0", "id": "b", "method": "initialize"}, "b", "jsonrpc"),
        ({"id": 3, "method": "initialize"}, 3, "jsonrpc"),
        ({"jsonrpc": "2.0", "id": {"x": 1}, "method": "initialize"}, None, "id"),
        ({"jsonrpc": "2.0", "method": 1}, None, "method"),
    ],
)
async def test_invalid_request(rpc, request_, reply_id, words) -> None:
    body = await reply(rpc, request_)
    assert body["id"] == reply_id
    assert body["error"]["code"] == -32600
    assert words in body["error"]["message"]


async def test_unknown_method(rpc) -> None:
    body = await reply(rpc, {"jsonrpc": "2.0", "id": "m", "method": "nope/x"})
    assert body == {
        "jsonrpc": "2.0",
        "id": "m",
        "error": {"code": -32601, "message": "Method not found: nope/x"},
    }


async def test_array_params(rpc) -> None:
    body = await reply(
        rpc, {"jsonrpc": "2.0", "id": 4, "method": "test/record", "params": [1]}
    )
    assert body["id"] == 4
    assert body["error"] == {
        "code": -32602,
        "message": "params must be an object (named params)",
    }
    assert rpc.calls == []


async def test_errors_keep_the_request_id(rpc) -> None:
    domain = await reply(
        rpc,
        {
            "jsonrpc": "2.0",
            "id": 11,
            "method": "test/fail",
            "params": {"how": "domain"},
        },
    )
    assert domain == {
        "jsonrpc": "2.0",
        "id": 11,
        "error": {
            "code": -32000,
            "message": "agent said no",
            "data": {"agentError": {"code": 1}},
        },
    }
    internal = await reply(rpc, {"jsonrpc": "2.0", "id": "z", "method": "test/fail"})
    assert internal == {
        "jsonrpc": "2.0",
        "id": "z",
        "error": {"code": -32603, "message": "Internal error"},
    }
    assert "secret" not in orjson.dumps(internal).decode()


async def test_null_id_is_a_request_not_a_notification(rpc) -> None:
    body = await reply(rpc, {"jsonrpc": "2.0", "id": None, "method": "initialize"})
    assert body["id"] is None
    assert body["result"]["protocolVersion"] == 1


async def test_notification_is_executed_and_answers_204(rpc) -> None:
    resp = await post(
        rpc, {"jsonrpc": "2.0", "method": "test/record", "params": {"v": "n"}}
    )
    assert resp.status == 204
    assert await resp.read() == b""
    assert rpc.calls == ["n"]
    # a failing notification gets no reply either
    resp = await post(rpc, {"jsonrpc": "2.0", "method": "nope"})
    assert resp.status == 204


async def test_batch_replies_in_order_and_runs_in_order(rpc) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "test/record", "params": {"v": "a"}},
        {"jsonrpc": "2.0", "method": "test/record", "params": {"v": "b"}},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "id": "3", "method": "test/record", "params": {"v": "c"}},
        7,
    ]
    body = await reply(rpc, batch)
    assert isinstance(body, list)
    assert [r["id"] for r in body] == [1, 2, "3", None]
    assert body[0]["result"] == {"v": "a"}
    assert body[1]["error"]["code"] == -32601
    assert body[2]["result"] == {"v": "c"}
    assert body[3]["error"]["code"] == -32600
    assert rpc.calls == ["a", "b", "c"]


async def test_empty_batch_is_one_invalid_request(rpc) -> None:
    body = await reply(rpc, [])
    assert isinstance(body, dict)
    assert body["id"] is None
    assert body["error"]["code"] == -32600


async def test_batch_of_notifications_answers_204(rpc) -> None:
    resp = await post(
        rpc,
        [
            {"jsonrpc": "2.0", "method": "test/record", "params": {"v": 1}},
            {"jsonrpc": "2.0", "method": "test/record", "params": {"v": 2}},
        ],
    )
    assert resp.status == 204
    assert await resp.read() == b""
    assert rpc.calls == [1, 2]


async def test_body_over_one_mib_is_413(rpc) -> None:
    big = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":"'
        + (b"a" * (1024 * 1024))
        + b'"}}'
    )
    resp = await rpc.post(
        "/api/acp", data=io.BytesIO(big), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_body_over_one_mib_without_length_is_413(rpc) -> None:
    async def chunks():
        yield b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":"'
        for _ in range(20):
            yield b"a" * (64 * 1024)
        yield b'"}}'

    resp = await rpc.post(
        "/api/acp", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded"]
)
async def test_other_content_type_is_415(rpc, content_type) -> None:
    resp = await post(
        rpc,
        {"jsonrpc": "2.0", "id": 1, "method": "initialize"},
        headers={"Content-Type": content_type},
    )
    assert resp.status == 415
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.api+json"]
)
async def test_json_content_types_accepted(rpc, content_type) -> None:
    body = await reply(
        rpc,
        {"jsonrpc": "2.0", "id": 1, "method": "initialize"},
        headers={"Content-Type": content_type},
    )
    assert body["result"]["protocolVersion"] == 1


async def test_no_content_type_is_json(rpc) -> None:
    resp = await rpc.post(
        "/api/acp",
        data=b'{"jsonrpc":"2.0","id":1,"method":"initialize"}',
        skip_auto_headers=["Content-Type"],
    )
    assert resp.status == 200
    assert (await resp.json())["result"]["protocolVersion"] == 1


async def test_dispatch_functions_share_the_semantics(rpc) -> None:
    app = rpc.app
    assert (
        await jsonrpc.dispatch(app, {"jsonrpc": "2.0", "method": "initialize"}) is None
    )
    one = await jsonrpc.dispatch(app, {"jsonrpc": "2.0", "id": 9, "method": "nope"})
    assert one["id"] == 9
    assert one["error"]["code"] == -32601
    raw = await jsonrpc.dispatch_bytes(app, b"nonsense")
    assert raw is not None
    assert orjson.loads(raw) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error: body is not valid JSON"},
    }
    assert await jsonrpc.dispatch_bytes(app, b'{"jsonrpc":"2.0","method":"x"}') is None
