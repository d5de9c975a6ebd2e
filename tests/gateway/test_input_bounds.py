"""Big numbers, long ids and NUL characters on the gateway (issue 12, defect 8): each is a
400 or -32602 naming the field, checked before any stream header is sent, and a request id
comes back exactly as it was sent.
"""

from __future__ import annotations

import secrets

import pytest

from shared.models.limits import MAX_ID_LENGTH
from tests.gateway.rpcutil import err, ok

BEYOND_BIGINT = str(2**63)
JSON = {"Content-Type": "application/json"}


def long_id() -> str:
    """Random characters (incompressible): 3,000+ of them overflowed a Postgres index row."""
    return secrets.token_urlsafe(3000)


# -- Last-Event-ID -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("9" * 5000, id="5000-digits"),
        pytest.param(BEYOND_BIGINT, id="2^63"),
        pytest.param("0" * 4999 + "99999999999999999999", id="zero-padded"),
    ],
)
async def test_last_event_id_beyond_bigint_is_400_before_the_stream(
    gateway, new_session, value
) -> None:
    sid = await new_session()
    for headers, query in (
        ({"Last-Event-ID": value}, {}),
        ({}, {"lastEventId": value}),
    ):
        resp = await gateway.get(
            "/api/acp", params={"sessionId": sid, **query}, headers=headers
        )
        assert resp.status == 400
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"].startswith("Invalid Last-Event-ID: "), body
        assert len(body["error"]) < 200, body  # the value is quoted, cut short


async def test_largest_bigint_last_event_id_replays_nothing(
    gateway, new_session, append
) -> None:
    """Beyond the last stored id but within a bigint: live only, not a 400."""
    from tests.gateway.conftest import SseReader, chunk

    sid = await new_session()
    await append(sid, chunk("old"))
    resp = await gateway.get(
        "/api/acp",
        params={"sessionId": sid},
        headers={"Last-Event-ID": str(2**63 - 1)},
    )
    assert resp.status == 200
    reader = SseReader(resp)
    frame = await reader.frame()
    assert frame is not None
    assert frame.id is None
    (new_id,) = await append(sid, chunk("new"))
    frame = await reader.frame()
    assert frame is not None
    assert frame.id == str(new_id)
    resp.close()


# -- request ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        b"18446744073709551616",  # 2^64
        b"123456789012345678901234567890",
        b"-9223372036854775809",
        pytest.param(b"9" * 500, id="500-digits"),  # beyond a double: orjson refuses it
        b"1.50",
        b"1e400",
    ],
)
async def test_request_id_comes_back_exactly_as_sent(gateway, literal) -> None:
    body = b'{"jsonrpc":"2.0","id":' + literal + b',"method":"initialize"}'
    resp = await gateway.post("/api/acp", data=body, headers=JSON)
    assert resp.status == 200
    raw = await resp.read()
    assert raw.startswith(b'{"jsonrpc":"2.0","id":' + literal + b","), raw[:200]
    assert b'"result":{"protocolVersion":1' in raw

    # in a batch, each member's own id, and the errors too
    batch = (
        b'[{"jsonrpc":"2.0","id":'
        + literal
        + b',"method":"nope"},{"jsonrpc":"2.0","id":7,"method":"initialize"}]'
    )
    resp = await gateway.post("/api/acp", data=batch, headers=JSON)
    raw = await resp.read()
    assert raw.startswith(b'[{"jsonrpc":"2.0","id":' + literal + b","), raw[:200]
    assert b'"code":-32601' in raw
    assert b'{"jsonrpc":"2.0","id":7,"result"' in raw


async def test_body_refused_by_the_decoder_stays_a_parse_error(gateway) -> None:
    """The fallback for big numbers accepts nothing orjson refuses for another reason."""
    for body in (
        b'{"jsonrpc":"2.0","id":1e400,"method":"initialize","params":{"a":"\\ud800"}}',
        b'{"jsonrpc":"2.0","id":1e400,"method":"initialize","params":{"a":NaN}}',
        b'{"jsonrpc":"2.0","id":1e400,"method":"initialize"',
    ):
        resp = await gateway.post("/api/acp", data=body, headers=JSON)
        assert resp.status == 200
        reply = await resp.json()
        assert reply["id"] is None, reply
        assert reply["error"]["code"] == -32700, reply


# -- session/new: NUL in every string param, long ids ------------------------------------

STRING_PARAMS = [
    "name",
    "cwd",
    "branch",
    "provider",
    "modeId",
    "role",
    "model",
    "specialistId",
    "idempotencyKey",
    "customCommand",
]


@pytest.mark.parametrize("field", STRING_PARAMS)
async def test_nul_in_a_session_new_param_is_32602_naming_it(
    gateway, workspace_id, cwd_root, field
) -> None:
    value = f"{cwd_root}/a\x00b" if field == "cwd" else "a\x00b"
    error = await err(
        gateway, "session/new", {"workspaceId": workspace_id, field: value}
    )
    assert error["code"] == -32602, error
    assert field in error["message"], error


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"customArgs": ["ok", "x\x00y"]}, "customArgs.1"),
        ({"mcpServers": [{"name": "m\x00", "command": "c"}]}, "mcpServers.0.name"),
        ({"mcpServers": [{"k\x00ey": "v"}]}, "mcpServers.0.k"),
    ],
)
async def test_nul_nested_in_session_new_params_is_32602_naming_it(
    gateway, workspace_id, params, named
) -> None:
    error = await err(gateway, "session/new", {"workspaceId": workspace_id, **params})
    assert error["code"] == -32602, error
    assert named in error["message"], error


async def test_nul_in_workspace_id_is_32602(gateway) -> None:
    error = await err(gateway, "session/new", {"workspaceId": "ws\x00"})
    assert error["code"] == -32602, error
    assert "workspaceId" in error["message"], error


@pytest.mark.parametrize("field", ["idempotencyKey", "specialistId", "workspaceId"])
async def test_long_id_in_session_new_is_32602_naming_it(
    gateway, workspace_id, field
) -> None:
    params = {"workspaceId": workspace_id, field: long_id()}
    error = await err(gateway, "session/new", params)
    assert error["code"] == -32602, error
    assert field in error["message"], error
    assert str(MAX_ID_LENGTH) in error["message"], error


async def test_id_of_the_maximum_length_is_accepted(gateway, workspace_id) -> None:
    key = "k" * MAX_ID_LENGTH
    first = await ok(
        gateway, "session/new", {"workspaceId": workspace_id, "idempotencyKey": key}
    )
    again = await ok(
        gateway, "session/new", {"workspaceId": workspace_id, "idempotencyKey": key}
    )
    assert again["sessionId"] == first["sessionId"]


async def test_long_session_ids_are_unknown_and_long_tool_call_id_is_32602(
    gateway, workspace_id
) -> None:
    for method, extra in (
        ("session/prompt", {"prompt": "hi"}),
        ("session/cancel", {}),
        ("session/load", {}),
    ):
        error = await err(gateway, method, {"sessionId": long_id(), **extra})
        assert error["code"] == -32004, (method, error)
    created = await ok(gateway, "session/new", {"workspaceId": workspace_id})
    error = await err(
        gateway,
        "session/respond_user_input",
        {
            "sessionId": created["sessionId"],
            "toolCallId": long_id(),
            "response": {"decision": "approve"},
        },
    )
    assert error["code"] == -32602, error
    assert "toolCallId" in error["message"], error


async def test_nul_in_a_prompt_is_kept(gateway, workspace_id, pool) -> None:
    """A prompt is stored as JSON text, where a NUL is an escape: it is not refused."""
    from tests.gateway.rpcutil import wait_events

    created = await ok(gateway, "session/new", {"workspaceId": workspace_id})
    sid = created["sessionId"]
    result = await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "a\x00b"})
    assert result["stopReason"] == "end_turn"
    events = await wait_events(
        pool,
        sid,
        lambda evs: any(e["update"]["sessionUpdate"] == "user_message" for e in evs),
    )
    (message,) = [e for e in events if e["update"]["sessionUpdate"] == "user_message"]
    assert message["update"]["content"]["text"] == "a\x00b"
