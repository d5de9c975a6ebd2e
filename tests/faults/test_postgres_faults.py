"""Postgres goes away and comes back (issue 7 item 3), through a TCP proxy the test controls.

The machine's Postgres is never touched: gateway and query service reach it through
tests/proxy.py, whose stop/start is the outage. While it lasts, requests fail fast with an
error naming Postgres; afterwards everything works again without a restart, and every
event of an answered prompt is in the log, contiguous.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from tests.gateway.rpcutil import call, events, kinds, ok, wait_events, wait_ready
from tests.proxy import TcpProxy

HANG_GUARD = 20.0  # a request that "fails fast" must answer well within this
CUTS = 3


@pytest.fixture
async def pg_proxy(database_url):
    proxy = TcpProxy.for_url(database_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def stack(pg_proxy, make_settings, aiohttp_client, database_url, cwd_root):
    # pg_proxy first: it is torn down after the apps, which store their last states
    settings = make_settings(database_url=pg_proxy.rewrite(database_url))
    gw = await aiohttp_client(create_gateway(settings))
    q = await aiohttp_client(create_query(settings))
    return gw, q


async def _rest_fails_naming_postgres(q, path: str) -> None:
    async with asyncio.timeout(HANG_GUARD):
        resp = await q.get(path)
    assert resp.status in (500, 503), (path, resp.status)
    body = await resp.json()
    assert set(body) == {"error"}
    text = body["error"].lower()
    assert "postgres" in text or "database" in text, (path, body)
    assert "Traceback" not in body["error"]


async def _rpc_fails_naming_postgres(gw, method: str, params) -> None:
    async with asyncio.timeout(HANG_GUARD):
        body = await call(gw, method, params)
    assert "error" in body, body
    assert body["error"]["code"] in (-32603, -32000), body
    assert "postgres" in body["error"]["message"].lower(), body


def _check_answered_turns(evs, answered: dict[str, str]) -> None:
    """Contiguous ids; each answered prompt's user_message, echo chunks and end are stored."""
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
    for text, expected in answered.items():
        starts = [
            i
            for i, e in enumerate(evs)
            if e["update"]["sessionUpdate"] == "user_message"
            and e["update"]["content"]["text"] == text
        ]
        assert len(starts) == 1, text
        said = ""
        for e in evs[starts[0] + 1 :]:
            kind = e["update"]["sessionUpdate"]
            if kind == "agent_message_chunk":
                said += e["update"]["content"]["text"]
            if kind in ("turn_complete", "error"):
                assert kind == "turn_complete", (text, e)
                break
        else:
            raise AssertionError(f"no turn_complete after {text!r}")
        assert said == expected, (text, said)


async def test_postgres_outage_fails_fast_and_loses_no_event(
    stack, pg_proxy, pool, workspace_id
):
    gw, q = stack
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    answered: dict[str, str] = {}
    for cycle in range(CUTS):
        # a turn that streams (15 chunks over 1.5 s) while Postgres disappears under it
        text = f"/slow 1.{5 + cycle}"
        turn = asyncio.create_task(
            call(gw, "session/prompt", {"sessionId": sid, "prompt": text})
        )
        async with asyncio.timeout(HANG_GUARD):
            while True:
                evs = await events(pool, sid)
                if evs[-1]["update"]["sessionUpdate"] == "agent_message_chunk":
                    break
                await asyncio.sleep(0.01)
        await pg_proxy.stop()

        # the outage: reads and writes answer at once, naming the database
        await _rest_fails_naming_postgres(q, f"/api/sessions/{sid}")
        await _rest_fails_naming_postgres(q, f"/api/sessions/{sid}/history")
        await _rest_fails_naming_postgres(q, f"/api/notes?workspaceId={workspace_id}")
        await _rest_fails_naming_postgres(q, f"/api/tasks?workspaceId={workspace_id}")
        await _rest_fails_naming_postgres(q, "/api/workspaces")
        await _rest_fails_naming_postgres(q, "/api/sessions?limit=7")
        await _rpc_fails_naming_postgres(
            gw, "session/new", {"workspaceId": workspace_id}
        )
        await _rpc_fails_naming_postgres(
            gw, "session/load", {"sessionId": "00000000-0000-4000-8000-000000000000"}
        )
        for client in (gw, q):
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 503

        await pg_proxy.start()
        async with asyncio.timeout(HANG_GUARD):
            reply = await turn
        if "result" in reply:
            assert reply["result"]["stopReason"] == "end_turn"
            answered[text] = "tick " * (15 + cycle)
        else:
            assert "postgres" in reply["error"]["message"].lower(), reply

        # full recovery, no restart
        for client in (gw, q):
            async with asyncio.timeout(HANG_GUARD):
                while (await client.get("/readyz")).status != 200:
                    await asyncio.sleep(0.05)
        resp = await q.get(f"/api/sessions/{sid}")
        assert resp.status == 200
        after = f"after {cycle}"
        out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": after})
        assert out["stopReason"] == "end_turn"
        answered[after] = f"echo: {after}"

    evs = await events(pool, sid)
    _check_answered_turns(evs, answered)
    assert len(answered) >= CUTS  # at least every prompt after a recovery
    # every turn ended exactly once (§9.25)
    assert kinds(evs).count("user_message") == (
        kinds(evs).count("turn_complete") + kinds(evs).count("error")
    )
    history = await (await q.get(f"/api/sessions/{sid}/history")).json()
    assert [e["eventId"] for e in history["history"]] == [e["eventId"] for e in evs]


async def test_prompt_while_postgres_is_down_fails_fast(
    stack, pg_proxy, pool, workspace_id
):
    """A prompt that cannot store its user_message answers an error naming Postgres;
    once Postgres is back the turn is closed in the log and the session works."""
    gw, _q = stack
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    await pg_proxy.stop()
    await _rpc_fails_naming_postgres(
        gw, "session/prompt", {"sessionId": sid, "prompt": "lost?"}
    )
    await pg_proxy.start()
    out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "back"})
    assert out["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert [e["eventId"] for e in evs] == [str(i) for i in range(1, len(evs) + 1)]
    assert kinds(evs).count("user_message") == (
        kinds(evs).count("turn_complete") + kinds(evs).count("error")
    )
    _check_answered_turns(evs, {"back": "echo: back"})


async def test_lost_commit_reply_mid_turn_stores_each_event_once(
    pg_proxy, make_settings, aiohttp_client, database_url, cwd_root, pool, workspace_id
):
    """Postgres commits a batch of a running turn but its reply is lost, then the
    connection drops (issue 12 item 12): the log holds each event once, ids contiguous.

    The turn waits on a permission request while the proxy starts dropping replies, so
    the batch that commits unacknowledged is the agent's answer to it, on every run. The
    pool's connections are all opened first: a new one could not finish its handshake
    while replies are dropped (a lease sweep holding the only open one would leave the
    writer nothing to send on).
    """
    settings = make_settings(
        database_url=pg_proxy.rewrite(database_url), pg_pool_min=5, pg_pool_max=5
    )
    gw = await aiohttp_client(create_gateway(settings))
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    text = "/permission"
    turn = asyncio.create_task(
        call(gw, "session/prompt", {"sessionId": sid, "prompt": text})
    )
    evs = await wait_events(pool, sid, _waiting_permission)
    tool_call_id = next(filter(None, map(_waiting_permission, evs)))
    waiting = len(evs)  # the log does not change while the turn waits
    pg_proxy.drop_replies = True
    try:
        # answered without Postgres: the session is live here
        answer = await ok(
            gw,
            "session/respond_user_input",
            {
                "sessionId": sid,
                "toolCallId": tool_call_id,
                "response": {"decision": "approve"},
            },
        )
        assert answer == {"ok": True}
        # the next batch (the answer's events) is committed (read around the proxy);
        # its reply is lost
        await wait_events(pool, sid, lambda evs: len(evs) > waiting)
        assert not turn.done()  # the writer still waits on the lost reply
    finally:
        pg_proxy.drop_replies = False
    await pg_proxy.cut()  # the writer sees the connection fail and retries the batch
    async with asyncio.timeout(HANG_GUARD):
        reply = await turn
    assert reply["result"]["stopReason"] == "end_turn", reply
    evs = await events(pool, sid)
    _check_answered_turns(evs, {text: "approved"})
    assert _said(evs) == "approved"
    after = [orjson.dumps(e["update"], option=orjson.OPT_SORT_KEYS) for e in evs]
    assert len(set(after)) == len(after), "an event stored twice"


def _waiting_permission(evs_or_event):
    """The toolCallId of a permission request waiting for the user (an event or a log)."""
    if isinstance(evs_or_event, list):
        return any(map(_waiting_permission, evs_or_event))
    update = evs_or_event["update"]
    if update["sessionUpdate"] == "tool_call" and update.get("status") == "waiting":
        return update["toolCallId"]
    return None


def _said(evs) -> str:
    return "".join(
        e["update"]["content"]["text"]
        for e in evs
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    )
