"""JSON-RPC fuzzer (issue 7 item 4): hypothesis over envelopes, params of every method and
batches, against the real gateway app with real Postgres and Redis.

Every reply must be HTTP 200/204 JSON-RPC (or 413/415 {"error"}), carry the request's own
id, never a traceback, never -32603 (nothing is down here); and afterwards the database
holds nothing half-written: every session has its event 1 (acp_status connecting) and
contiguous event ids matching its counter.

FUZZ_EXAMPLES sets the number of inputs (default 500); the agent behind every valid
session/new is /bin/true (dies at once), so creating sessions costs no Python start-up.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import random
import string
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.gateway.app import create_app
from shared.db.connect import create_pool

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
METHODS = [
    "initialize",
    "session/new",
    "session/prompt",
    "session/cancel",
    "session/set_mode",
    "session/set_model",
    "session/load",
    "session/respond_user_input",
    "_providers/list",
]

# issue 12: MCP servers a request may not hand an agent (stdio, foreign URLs, unknown names)
MCP_SEEDS: list[Any] = [
    {
        "name": "x",
        "command": "/bin/sh",
        "args": ["-c", "id"],
        "env": [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}],
    },
    {"type": "http", "name": "x", "url": "https://evil.example/mcp", "headers": []},
    {"type": "sse", "name": "x", "url": "http://127.0.0.1:1/sse"},
    {"name": "x"},
    "no-such-server",
]

NASTY = [
    "",
    " ",
    "\x00",
    "nul\x00inside",
    "'; DROP TABLE sessions; --",
    '" OR 1=1 --',
    "$1",
    "%s%s%n",
    "../../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\system32",
    "file:///etc/shadow",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\u202egnp.exe",
    "👩‍👩‍👧‍👦" * 50,
    "Ω≈ç√∫µ≤≥÷",
    "\ufeff\u200b",
    "a" * 10_000,
    "é" * 300,
    "00000000-0000-0000-0000-000000000000",
    "-1",
    "1e309",
    # issue 12 defect 8: numbers past a bigint and Python's 4,300-digit int limit, an id
    # past a Postgres index row (random, so it does not compress)
    "9223372036854775808",
    "9" * 5000,
    "".join(random.Random(12).choices(string.ascii_letters + string.digits, k=3000)),
]
# request ids past 64 bits come back exactly as sent (issue 12 defect 8)
BIG_IDS = [2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, 10**400]

text = st.one_of(st.sampled_from(NASTY), st.text(max_size=300))
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
junk = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(text, inner, max_size=4),
    ),
    max_leaves=12,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field: right-ish value, junk, or absent (None means drop the key)."""
    return st.one_of(strategy, junk, st.just(_ABSENT))


_ABSENT = object()


def _strip(value: Any) -> Any:
    """Drop absent fields at any depth."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not _ABSENT}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def params_for(ctx: dict[str, Any]) -> st.SearchStrategy[Any]:
    ws = st.sampled_from([ctx["ws"], ctx["ws"], "no-such-ws"]) | text
    sid = st.sampled_from([ctx["sid"], str(uuid.uuid4())]) | text
    prompt = st.one_of(
        text,
        st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image", "resource_link"]) | text},
                optional={"text": maybe(text), "uri": maybe(text)},
            ),
            max_size=3,
        ),
    )
    fields = {
        "workspaceId": ws,
        "sessionId": sid,
        "name": text,
        "cwd": st.sampled_from(
            [ctx["cwd"], ctx["root"], ctx["other"], "/", "relative", "/tmp/../etc"]
        )
        | text,
        "branch": text,
        "provider": st.sampled_from(["opencode", "echo", "custom", "nope"]) | text,
        "modeId": st.sampled_from(["chat", "plan"]) | text,
        "mode": text,
        "role": st.sampled_from(["CRAFTER", "gate", "ROUTA"]) | text,
        "model": st.sampled_from(["echo-small", "m"]) | text,
        "parentSessionId": sid,
        "specialistId": text,
        "mcpServers": st.lists(st.dictionaries(text, junk, max_size=2), max_size=2)
        | st.lists(st.sampled_from(MCP_SEEDS) | text, max_size=2),
        "idempotencyKey": text,
        "autoApprovePermissions": st.booleans(),
        "customCommand": text,
        "customArgs": st.lists(text, max_size=3),
        "prompt": prompt,
        "toolCallId": text,
        "response": st.fixed_dictionaries(
            {},
            optional={
                "optionId": maybe(text),
                "decision": maybe(st.sampled_from(["approve", "deny"])),
                "scope": maybe(st.sampled_from(["turn", "session"])),
            },
        ),
        "protocolVersion": st.integers(),
    }
    named = st.fixed_dictionaries(
        {}, optional={k: maybe(v) for k, v in fields.items()}
    ).map(_strip)
    return st.one_of(named, named, junk)


def envelopes(ctx: dict[str, Any]) -> st.SearchStrategy[Any]:
    ids = st.one_of(
        st.integers(min_value=-(2**53), max_value=2**53),
        st.sampled_from(BIG_IDS),
        text,
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    )
    # mostly well-formed envelopes (so params reach the methods), some of any shape
    good = st.fixed_dictionaries(
        {
            "jsonrpc": st.just("2.0"),
            "id": st.integers(min_value=0, max_value=2**53)
            | st.sampled_from(BIG_IDS)
            | text,
            "method": st.sampled_from(METHODS),
            "params": params_for(ctx),
        }
    )
    notification = st.fixed_dictionaries(
        {
            "jsonrpc": st.just("2.0"),
            "method": st.sampled_from(METHODS),
            "params": params_for(ctx),
        }
    )
    odd = st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | scalar,
            "id": ids,
            "method": st.sampled_from(METHODS) | text | scalar,
            "params": params_for(ctx),
        },
    )
    single = st.one_of(good, good, good, good, notification, odd, junk).map(_strip)
    return st.one_of(single, single, single, st.lists(single, max_size=5))


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"{",
            b'{"jsonrpc":"2.0","id":1,"method":"initialize"',
            b'"\\ud800"',
            b'{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"workspaceId":"\\ud800"}}',
            b"\xff\xfe\x00",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            b"null",
            b"1",
            b"NaN",
        ]
    ),
)


def _ids(payload: Any) -> list[Any]:
    """Ids we expect back, in order, for the requests that must be answered with their id."""
    members = payload if isinstance(payload, list) else [payload]
    return [
        m["id"]
        for m in members
        if isinstance(m, dict)
        and "id" in m
        and (m["id"] is None or type(m["id"]) in (int, str, float))
    ]


def _check_reply(
    status: int, body: bytes, payload: Any, sent: bytes, tally: collections.Counter[str]
) -> None:
    assert b"Traceback" not in body, body[:500]
    assert b'File "' not in body, body[:500]
    tally[f"http {status}"] += 1
    if status in (413, 415):
        assert set(orjson.loads(body)) == {"error"}
        return
    assert status in (200, 204), (status, body[:500], sent[:300])
    if status == 204:
        assert body == b""
        return
    # the stdlib keeps big integers exact (orjson reads them as floats)
    reply = json.loads(body)
    replies = reply if isinstance(reply, list) else [reply]
    if isinstance(reply, list):
        tally["batch"] += 1
    for r in replies:
        tally["result" if "result" in r else str(r["error"]["code"])] += 1
        assert r["jsonrpc"] == "2.0"
        assert ("result" in r) != ("error" in r), r
        if "error" in r:
            assert isinstance(r["error"]["code"], int)
            assert isinstance(r["error"]["message"], str)
            assert r["error"]["code"] != -32603, (r, sent[:500])
    if isinstance(payload, dict) and "method" in payload and isinstance(reply, dict):
        want = _ids(payload)
        if (want and "error" not in reply) or (
            want and reply["error"]["code"] != -32600
        ):
            assert reply["id"] == want[0], (reply, sent[:300])


@pytest.fixture
def fuzz_env(make_settings, cwd_root, database_url):
    """A gateway on its own loop (hypothesis drives a sync test), a workspace, a session."""
    loop = asyncio.new_event_loop()
    settings = make_settings(
        default_provider="opencode",
        opencode_bin="/bin/true",
        claude_agent_acp_bin="/bin/true",
        codex_acp_bin="/bin/true",
        gemini_bin="/bin/true",
        agent_request_timeout=5.0,
        prompt_timeout=5.0,
    )

    async def _client() -> TestClient:
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        return client

    client = loop.run_until_complete(_client())
    ws = f"fuzz-{uuid.uuid4().hex[:10]}"
    pool = loop.run_until_complete(create_pool(database_url, min_size=1, max_size=2))
    loop.run_until_complete(
        pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, 'fuzz')", ws)
    )

    async def _first() -> str:
        resp = await client.post(
            "/api/acp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "session/new",
                "params": {"workspaceId": ws},
            },
        )
        return str((await resp.json())["result"]["sessionId"])

    sid = loop.run_until_complete(_first())
    ctx = {
        "loop": loop,
        "client": client,
        "pool": pool,
        "ws": ws,
        "sid": sid,
        "cwd": str(cwd_root / ws / "fuzz"),
        "root": str(cwd_root),
        "other": str(cwd_root / "other-workspace"),
    }
    yield ctx
    loop.run_until_complete(pool.close())
    loop.run_until_complete(client.close())
    loop.close()


async def _post(client: TestClient, body: bytes, content_type: str | None) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    async with asyncio.timeout(30):
        data = io.BytesIO(body) if len(body) > 65536 else body
        resp = await client.post("/api/acp", data=data, headers=headers)
        return resp.status, await resp.read()


async def _half_written(pool: Any, ws: str) -> list[Any]:
    """Sessions of the workspace whose log lacks event 1, has gaps, or disagrees with its counter."""
    return list(
        await pool.fetch(
            """
            SELECT s.session_id, s.last_event_id, count(e.event_id) AS n,
                   coalesce(max(e.event_id), 0) AS top,
                   bool_or(e.event_id = 1 AND e.kind = 'acp_status') AS first_ok
            FROM sessions s LEFT JOIN session_events e USING (session_id)
            WHERE s.workspace_id = $1
            GROUP BY s.session_id, s.last_event_id
            HAVING count(e.event_id) = 0 OR count(e.event_id) <> max(e.event_id)
                OR max(e.event_id) <> s.last_event_id
                OR NOT bool_or(e.event_id = 1 AND e.kind = 'acp_status')
            """,
            ws,
        )
    )


def test_jsonrpc_fuzz(fuzz_env):
    loop, client = fuzz_env["loop"], fuzz_env["client"]
    seen = {"n": 0}
    tally: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        payload=envelopes(fuzz_env),
        raw=raw_bodies,
        # what to send: 0-8 the JSON of payload, 9 a raw body, 10 over 1 MiB, 11-13
        # with another Content-Type (none, +json: accepted; text/plain: 415)
        shape=st.sampled_from(range(14)),
    )
    # issue 12 defect 8: seeds that once gave -32603 or a float id
    @example(
        payload={"jsonrpc": "2.0", "id": 2**64, "method": "initialize"},
        raw=b"",
        shape=0,
    )
    @example(
        payload=[
            {"jsonrpc": "2.0", "id": 10**30, "method": "nope"},
            {"jsonrpc": "2.0", "id": -(2**63) - 1, "method": "initialize"},
        ],
        raw=b"",
        shape=0,
    )
    @example(
        payload={
            "jsonrpc": "2.0",
            "id": 5,
            "method": "session/new",
            "params": {"workspaceId": fuzz_env["ws"], "cwd": fuzz_env["cwd"] + "\x00"},
        },
        raw=b"",
        shape=0,
    )
    @example(
        payload={
            "jsonrpc": "2.0",
            "id": 6,
            "method": "session/new",
            "params": {"workspaceId": fuzz_env["ws"], "idempotencyKey": NASTY[-1]},
        },
        raw=b"",
        shape=0,
    )
    @example(
        payload=None,
        raw=b'{"jsonrpc":"2.0","id":' + b"9" * 500 + b',"method":"initialize"}',
        shape=9,
    )
    def run(payload, raw, shape):
        body = json.dumps(payload).encode()
        content_type = {11: None, 12: "application/ld+json", 13: "text/plain"}.get(
            shape, "application/json"
        )
        if shape == 9:
            body = raw
        elif shape == 10:
            body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":"'
            body += b"a" * (1024 * 1024) + b'"}}'
        status, reply = loop.run_until_complete(_post(client, body, content_type))
        seen["n"] += 1
        if shape == 10:
            assert status == 413, (status, reply[:200])
        elif shape == 13:
            assert status == 415, (status, reply[:200])
        _check_reply(status, reply, None if shape == 9 else payload, body, tally)

    run()
    assert seen["n"] >= EXAMPLES
    print(f"jsonrpc fuzz: {seen['n']} inputs, replies {dict(tally)}")  # noqa: T201
    # the generator reaches past the envelope: params errors and real results
    assert tally["-32602"] > 0
    assert tally["result"] > 0
    broken = loop.run_until_complete(_half_written(fuzz_env["pool"], fuzz_env["ws"]))
    assert broken == []
    count = loop.run_until_complete(
        fuzz_env["pool"].fetchval(
            "SELECT count(*) FROM sessions WHERE workspace_id = $1", fuzz_env["ws"]
        )
    )
    assert count >= 1


def test_hostile_strings_in_every_session_new_field(fuzz_env):
    """Each NASTY string in each string field of a valid session/new: a session or -32602."""
    loop, client, ws = fuzz_env["loop"], fuzz_env["client"], fuzz_env["ws"]
    fields = ["name", "branch", "cwd", "specialistId", "idempotencyKey", "model"]
    tally: collections.Counter[str] = collections.Counter()
    # a NUL inside the cwd root once gave -32603 (issue 12 defect 8)
    cwd_seeds = [
        ("cwd", fuzz_env["cwd"] + "/a\x00b"),
        ("cwd", fuzz_env["cwd"] + "\x00"),
    ]
    for i, (field, value) in enumerate(
        [(f, v) for v in NASTY for f in fields] + cwd_seeds
    ):
        request = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "session/new",
            "params": {"workspaceId": ws, "provider": "opencode", field: value},
        }
        body = json.dumps(request).encode()
        status, reply = loop.run_until_complete(_post(client, body, "application/json"))
        _check_reply(status, reply, request, body, tally)
    assert tally["result"] > 0
    assert tally["-32602"] > 0
    broken = loop.run_until_complete(_half_written(fuzz_env["pool"], ws))
    assert broken == []
