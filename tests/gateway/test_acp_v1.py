"""The ACP v1 surface through the real gateway, query service and echo agent.

Config options, usage sums, elicitation, resume preference, `_meta` and
`$/cancel_request`: each driven by an echo command or a raw fake agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from services.query.app import create_app as create_query_app
from shared import providers
from shared.db import sessions as sessions_db
from tests.gateway.conftest import wait_fanout_ready
from tests.gateway.rpcutil import WAIT, call, err, events, kinds, ok, wait_events
from tests.gateway.test_terminals_e2e import REPO_ROOT, new_echo, updates_of

V1_AGENT = Path(__file__).parent / "agents" / "v1_agent.py"


@pytest.fixture(autouse=True)
def echo_of_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawn the echo agent of this checkout (agents get no PYTHONPATH)."""
    echo = providers.PROVIDERS["echo"]
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
        "runpy.run_module('services.echo', run_name='__main__')"
    )
    monkeypatch.setitem(
        providers.PROVIDERS, "echo", dataclasses.replace(echo, args=("-c", code))
    )


@pytest.fixture
async def clients(make_settings, aiohttp_client, cwd_root):
    settings = make_settings(allow_custom_commands=True)
    gateway = await aiohttp_client(create_app(settings))
    await wait_fanout_ready(gateway.app)
    query = await aiohttp_client(create_query_app(settings))
    return gateway, query, settings


async def context_of(query: Any, sid: str) -> dict[str, Any]:
    resp = await query.get(f"/api/sessions/{sid}/context")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def context_until(
    query: Any, sid: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the context until `predicate` holds (hang guard only)."""
    async with asyncio.timeout(WAIT):
        while True:
            ctx = await context_of(query, sid)
            if predicate(ctx):
                return ctx
            await asyncio.sleep(0.02)


def current(options: list[dict[str, Any]], config_id: str) -> Any:
    return next(o for o in options if o["id"] == config_id)["currentValue"]


# -- config options ---------------------------------------------------------------------


async def test_set_config_option_passes_the_option_and_context_shows_the_list(
    clients, pool, workspace_id
):
    gateway, query, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    # the list from session/new is stored once the agent reported it
    ctx = await context_until(query, sid, lambda c: "configOptions" in c)
    assert current(ctx["configOptions"], "model") == "echo-small"

    out = await ok(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "model", "value": "echo-large"},
    )
    assert current(out["configOptions"], "model") == "echo-large"
    ctx = await context_of(query, sid)
    assert current(ctx["configOptions"], "model") == "echo-large"
    assert ctx["model"] == "echo-large"  # the model option persists the model

    e = await err(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "temperature", "value": "hot"},
    )
    assert e["code"] == -32602
    assert "configId" in e["message"]
    e = await err(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "model", "value": "gpt-9"},
    )
    assert e["code"] == -32602
    assert "value" in e["message"]
    e = await err(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "model", "value": True},
    )
    assert e["code"] == -32602
    assert "value" in e["message"]
    e = await err(
        gateway, "session/set_config_option", {"sessionId": sid, "value": "x"}
    )
    assert e["code"] == -32602
    assert "configId" in e["message"]
    ctx = await context_of(query, sid)
    assert current(ctx["configOptions"], "model") == "echo-large"


async def test_context_has_no_config_options_before_the_agent_reported(
    clients, pool, workspace_id
):
    gateway, query, _ = clients
    # a fork has had no agent yet, so no list and no usage
    sid = await new_echo(gateway, pool, workspace_id)
    resp = await query.post(f"/api/sessions/{sid}/fork", json={})
    assert resp.status == 201, await resp.text()
    fork = (await resp.json())["session"]["sessionId"]
    ctx = await context_of(query, fork)
    assert "configOptions" not in ctx
    assert "usage" not in ctx


# -- usage --------------------------------------------------------------------------------


async def session_of(query: Any, sid: str) -> dict[str, Any]:
    resp = await query.get(f"/api/sessions/{sid}")
    assert resp.status == 200, await resp.text()
    session: dict[str, Any] = (await resp.json())["session"]
    return session


async def test_usage_is_summed_per_session_and_counted_by_provider(
    clients, pool, workspace_id
):
    gateway, query, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    assert "usage" not in await session_of(query, sid)  # absent before a report
    listed = await (await query.get(f"/api/sessions?workspaceId={workspace_id}")).json()
    assert "usage" not in next(s for s in listed["sessions"] if s["sessionId"] == sid)

    for _ in range(2):
        reply = await ok(
            gateway, "session/prompt", {"sessionId": sid, "prompt": "/usage"}
        )
        assert reply["usage"]["inputTokens"] == 20
    want = {
        "contextUsed": 1200,
        "contextSize": 200000,
        "costAmount": 0.01,
        "costCurrency": "USD",
        "inputTokens": 40,  # two turns of 20
        "outputTokens": 20,
    }
    assert (await session_of(query, sid))["usage"] == want
    assert (await context_of(query, sid))["usage"] == want
    # the list (served from its cache, warmed above) shows it too
    listed = await (await query.get(f"/api/sessions?workspaceId={workspace_id}")).json()
    assert next(s for s in listed["sessions"] if s["sessionId"] == sid)["usage"] == want

    text = await (await gateway.get("/metrics")).text()
    assert 'routa_agent_tokens_total{kind="input",provider="echo"} 40.0' in text
    assert 'routa_agent_tokens_total{kind="output",provider="echo"} 20.0' in text
    # echo reports the same cumulative cost twice: it grew once, by 0.01
    assert 'routa_agent_cost_total{currency="USD",provider="echo"} 0.01' in text
    assert sid not in text


# -- elicitation --------------------------------------------------------------------------


async def _elicit_turn(gateway, pool, sid: str) -> tuple[asyncio.Task[Any], str]:
    skip = len(await events(pool, sid))
    task = asyncio.create_task(
        ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "/elicit"})
    )
    evs = await wait_events(
        pool,
        sid,
        lambda evs: any(
            e["update"]["sessionUpdate"] == "elicitation_request" for e in evs[skip:]
        ),
    )
    request = next(
        e["update"]
        for e in evs[skip:]
        if e["update"]["sessionUpdate"] == "elicitation_request"
    )
    assert request["message"] == "What is your name?"
    assert request["requestedSchema"]["properties"]["name"]["type"] == "string"
    assert request["requestedSchema"]["required"] == ["name"]
    return task, request["elicitationId"]


def last_turn_text(evs: list[dict[str, Any]]) -> str:
    ks = [e["update"]["sessionUpdate"] for e in evs]
    start = len(ks) - 1 - ks[::-1].index("user_message")
    return "".join(
        e["update"]["content"]["text"]
        for e in evs[start:]
        if e["update"]["sessionUpdate"] == "agent_message_chunk"
    )


async def test_elicitation_accept_decline_cancel_and_unknown(
    clients, pool, workspace_id
):
    gateway, _, _ = clients
    sid = await new_echo(gateway, pool, workspace_id)
    e = await err(
        gateway,
        "session/respond_elicitation",
        {"sessionId": sid, "elicitationId": "nope", "action": "accept"},
    )
    assert e["code"] == -32000

    task, eid = await _elicit_turn(gateway, pool, sid)
    e = await err(
        gateway,
        "session/respond_elicitation",
        {"sessionId": sid, "elicitationId": eid, "action": "maybe"},
    )
    assert e["code"] == -32602
    assert "action" in e["message"]
    res = await ok(
        gateway,
        "session/respond_elicitation",
        {
            "sessionId": sid,
            "elicitationId": eid,
            "action": "accept",
            "content": {"name": "Ada"},
        },
    )
    assert res == {"ok": True}
    assert (await task)["stopReason"] == "end_turn"
    evs = await events(pool, sid)
    assert last_turn_text(evs).endswith("hello Ada")
    responses = updates_of(evs, "elicitation_response")
    assert responses == [
        {
            "sessionUpdate": "elicitation_response",
            "elicitationId": eid,
            "action": "accept",
        }
    ]
    # answered once: a second answer finds nothing pending
    e = await err(
        gateway,
        "session/respond_elicitation",
        {"sessionId": sid, "elicitationId": eid, "action": "accept"},
    )
    assert e["code"] == -32000

    task, eid = await _elicit_turn(gateway, pool, sid)
    await ok(
        gateway,
        "session/respond_elicitation",
        {"sessionId": sid, "elicitationId": eid, "action": "decline"},
    )
    assert (await task)["stopReason"] == "end_turn"
    assert last_turn_text(await events(pool, sid)).endswith("declined")

    # a cancelled turn answers its pending elicitation `cancel`
    task, eid = await _elicit_turn(gateway, pool, sid)
    await ok(gateway, "session/cancel", {"sessionId": sid})
    assert (await task)["stopReason"] == "cancelled"
    evs = await events(pool, sid)
    assert updates_of(evs, "elicitation_response")[-1] == {
        "sessionUpdate": "elicitation_response",
        "elicitationId": eid,
        "action": "cancel",
    }


async def test_unanswered_elicitation_is_cancelled_after_prompt_timeout(
    make_settings, aiohttp_client, cwd_root, pool, workspace_id
):
    settings = make_settings(prompt_timeout=1.0)
    gateway = await aiohttp_client(create_app(settings))
    sid = await new_echo(gateway, pool, workspace_id)
    task, _ = await _elicit_turn(gateway, pool, sid)
    # the call answers `pending` after PROMPT_TIMEOUT; the elicitation is cancelled then
    assert (await task).get("pending") is True
    evs = await wait_events(pool, sid, lambda evs: kinds(evs)[-1] == "turn_complete")
    assert updates_of(evs, "elicitation_response")[-1]["action"] == "cancel"
    assert last_turn_text(evs).endswith("cancelled")


# -- resume preference, close and delete ----------------------------------------------------


async def new_v1(gateway, pool, workspace_id, log: Path, caps: str) -> str:
    """A session on the raw v1 agent, which logs what it receives to `log`."""
    res = await ok(
        gateway,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            "customCommand": sys.executable,
            "customArgs": [str(V1_AGENT), "--log", str(log), "--caps", caps],
        },
    )
    sid: str = res["sessionId"]
    evs = await wait_events(
        pool,
        sid,
        lambda evs: any(
            e["update"]["sessionUpdate"] == "acp_status"
            and e["update"]["status"] in ("ready", "error")
            for e in evs
        ),
    )
    assert evs[-1]["update"]["status"] == "ready", evs
    return sid


def received(log: Path, method: str) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [m for m in lines if m.get("method") == method]


async def wait_received(log: Path, method: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(WAIT):
        while not (found := received(log, method)):
            await asyncio.sleep(0.02)
    return found


async def test_resume_preferred_and_close_and_delete_sent_when_offered(
    clients, pool, workspace_id, tmp_path
):
    gateway, query, _ = clients
    log = tmp_path / "v1.log"
    sid = await new_v1(gateway, pool, workspace_id, log, "resume,close,delete")
    agent_sid = (await sessions_db.get(pool, uuid.UUID(sid))).routa_agent_id
    assert agent_sid

    resp = await query.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    closed = await wait_received(log, "session/close")
    assert closed[0]["params"] == {"sessionId": agent_sid}

    out = await ok(gateway, "session/load", {"sessionId": sid})
    assert out["resumeMode"] == "resumed"
    resumed = received(log, "session/resume")
    assert [m["params"]["sessionId"] for m in resumed] == [agent_sid]
    assert len(received(log, "session/new")) == 1  # no fresh agent session
    assert (await sessions_db.get(pool, uuid.UUID(sid))).routa_agent_id == agent_sid

    resp = await query.delete(f"/api/sessions/{sid}")
    assert resp.status == 200
    deleted = await wait_received(log, "session/delete")
    assert deleted[0]["params"] == {"sessionId": agent_sid}


async def test_without_resume_the_session_is_recreated_and_nothing_is_closed(
    clients, pool, workspace_id, tmp_path
):
    gateway, query, _ = clients
    log = tmp_path / "v1.log"
    sid = await new_v1(gateway, pool, workspace_id, log, "")
    resp = await query.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    await wait_until_stopped(gateway, sid)
    out = await ok(gateway, "session/load", {"sessionId": sid})
    assert out["resumeMode"] == "recreated"
    assert len(received(log, "session/new")) == 2
    assert received(log, "session/resume") == []
    assert received(log, "session/close") == []


async def wait_until_stopped(gateway, sid: str) -> None:
    manager = gateway.app[SESSION_MANAGER]
    async with asyncio.timeout(WAIT):
        while manager.is_live_here(sid):
            await asyncio.sleep(0.02)


# -- _meta and traceparent ------------------------------------------------------------------

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def turn_events(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ks = kinds(evs)
    return evs[len(ks) - 1 - ks[::-1].index("user_message") :]


async def test_meta_reaches_the_agent_and_a_traceparent_is_made_and_stored(
    clients, pool, workspace_id, tmp_path
):
    gateway, _, _ = clients
    sid = await new_v1(gateway, pool, workspace_id, tmp_path / "v1.log", "")
    await ok(
        gateway,
        "session/prompt",
        {"sessionId": sid, "prompt": "meta", "_meta": {"tenant": {"id": 7}}},
    )
    turn = turn_events(await events(pool, sid))
    said = json.loads(
        "".join(
            e["update"]["content"]["text"]
            for e in turn
            if e["update"]["sessionUpdate"] == "agent_message_chunk"
        )
    )
    assert said["tenant"] == {"id": 7}  # the client's _meta, unchanged
    assert TRACEPARENT.match(said["traceparent"])  # made here: the client sent none
    ends = [e for e in turn if e["update"]["sessionUpdate"] == "turn_complete"]
    assert turn[0]["_meta"] == {"traceparent": said["traceparent"]}
    assert ends[0]["_meta"] == {"traceparent": said["traceparent"]}

    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await ok(
        gateway,
        "session/prompt",
        {"sessionId": sid, "prompt": "meta", "_meta": {"traceparent": given}},
    )
    turn = turn_events(await events(pool, sid))
    assert json.loads(turn[1]["update"]["content"]["text"]) == {"traceparent": given}
    assert turn[-1]["_meta"] == {"traceparent": given}

    e = await err(
        gateway, "session/prompt", {"sessionId": sid, "prompt": "x", "_meta": [1]}
    )
    assert e["code"] == -32602
    assert "_meta" in e["message"]


# -- $/cancel_request -----------------------------------------------------------------------


async def test_agent_withdraws_its_elicitation_with_cancel_request(
    clients, pool, workspace_id, tmp_path
):
    gateway, _, _ = clients
    sid = await new_v1(gateway, pool, workspace_id, tmp_path / "v1.log", "")
    out = await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "withdraw"})
    assert out["stopReason"] == "end_turn"
    turn = turn_events(await events(pool, sid))
    request = next(
        e["update"]
        for e in turn
        if e["update"]["sessionUpdate"] == "elicitation_request"
    )
    assert updates_of(turn, "elicitation_response") == [
        {
            "sessionUpdate": "elicitation_response",
            "elicitationId": request["elicitationId"],
            "action": "cancel",
        }
    ]
    said = json.loads(
        next(
            e["update"]["content"]["text"]
            for e in turn
            if e["update"]["sessionUpdate"] == "agent_message_chunk"
        )
    )
    assert said["result"] == {"action": "cancel"}


# -- $/cancel_request for the gateway's own requests -------------------------------------------


async def post_then_hang_up(gateway: Any, method: str, params: dict[str, Any]) -> Any:
    """POST one call on a raw connection; returns the writer, to close it mid-call."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    ).encode()
    _, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
    writer.write(
        b"POST /api/acp HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    return writer


def sent_errors(log: Path) -> list[dict[str, Any]]:
    """The agent's own error answers (it logs them as `{"sent": …}`)."""
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [m["sent"] for m in lines if "sent" in m and "error" in m["sent"]]


async def wait_sent_error(log: Path) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while not (found := sent_errors(log)):
            await asyncio.sleep(0.02)
    return found[0]


async def still_serves(gateway: Any, pool: Any, sid: str) -> None:
    """After a withdrawn request the session is ready and works as before."""
    out = await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    assert out["stopReason"] == "end_turn"
    out = await ok(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "effort", "value": "high"},
    )
    assert current(out["configOptions"], "effort") == "high"
    statuses = [
        e["update"]["status"]
        for e in await events(pool, sid)
        if e["update"]["sessionUpdate"] == "acp_status"
    ]
    assert statuses[-1] == "ready", statuses
    assert "error" not in statuses, statuses
    assert gateway.app[SESSION_MANAGER].is_live_here(sid)


async def test_a_call_whose_client_hangs_up_is_withdrawn_from_the_agent(
    clients, pool, workspace_id, tmp_path
):
    """The test server cancels the handler of a connection that closes
    (aiohttp's handler_cancellation); the agent request it waited on is withdrawn."""
    gateway, _, _ = clients
    log = tmp_path / "v1.log"
    sid = await new_v1(gateway, pool, workspace_id, log, "")
    writer = await post_then_hang_up(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "effort", "value": "slow"},
    )
    (request,) = await wait_received(log, "session/set_config_option")
    writer.close()  # the client goes away while the agent works on it
    await writer.wait_closed()
    cancels = await wait_received(log, "$/cancel_request")
    assert [c["params"] for c in cancels] == [{"requestId": request["id"]}]
    # the agent answers the withdrawn request -32800: no crash, no error state
    assert (await wait_sent_error(log))["error"]["code"] == -32800
    await still_serves(gateway, pool, sid)


async def test_a_call_the_agent_did_not_answer_in_time_is_withdrawn(
    make_settings, aiohttp_client, cwd_root, pool, workspace_id, tmp_path
):
    # generous for start-up on a loaded machine; only the held request runs into it
    gateway = await aiohttp_client(
        create_app(make_settings(allow_custom_commands=True, agent_request_timeout=5.0))
    )
    await wait_fanout_ready(gateway.app)
    log = tmp_path / "v1.log"
    sid = await new_v1(gateway, pool, workspace_id, log, "")
    e = await err(
        gateway,
        "session/set_config_option",
        {"sessionId": sid, "configId": "effort", "value": "slow"},
    )
    assert "did not answer session/set_config_option" in e["message"]
    (request,) = received(log, "session/set_config_option")
    cancels = await wait_received(log, "$/cancel_request")
    assert [c["params"] for c in cancels] == [{"requestId": request["id"]}]
    # the late -32800 finds nobody waiting and fails nothing
    assert (await wait_sent_error(log))["id"] == request["id"]
    await still_serves(gateway, pool, sid)


async def test_a_call_in_flight_when_the_session_stops_is_withdrawn(
    clients, pool, workspace_id, tmp_path
):
    gateway, query, _ = clients
    log = tmp_path / "v1.log"
    sid = await new_v1(gateway, pool, workspace_id, log, "")
    pending = asyncio.create_task(
        call(
            gateway,
            "session/set_config_option",
            {"sessionId": sid, "configId": "effort", "value": "slow"},
        )
    )
    (request,) = await wait_received(log, "session/set_config_option")
    resp = await query.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    cancels = await wait_received(log, "$/cancel_request")
    assert [c["params"] for c in cancels] == [{"requestId": request["id"]}]
    async with asyncio.timeout(WAIT):
        reply = await pending
    assert "error" in reply, reply  # the call ends with the session, as an error
    await wait_until_stopped(gateway, sid)
