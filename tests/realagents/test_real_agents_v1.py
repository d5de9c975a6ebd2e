"""The ACP v1 features the pinned real agents offer, through the gateway, offline.

What claude-agent-acp 0.23.1 and opencode 1.18.33 both offer (docs/agents.md has the
table): usage reports (`usage_update` and a prompt's `usage`), config options for model
and mode (`session/set_config_option`), `session/resume` and `session/close`. Each test
runs once per agent through a real gateway process and the query service's REST, and
checks what the agent did with it in what it sent its (scripted) model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.realagents.harness import WAIT, Stack, updates, wait_for
from tests.realagents.modelserver import ModelServer, Text
from tests.scaleout.support import Proc, Subscriber

pytestmark = [pytest.mark.realagents, pytest.mark.timeout(400)]

# what each agent's config options offer and the model API names they send
DEFAULT_MODEL = {"claude": "default", "opencode": "scripted/scripted-model"}
OTHER_MODEL = {"claude": "haiku", "opencode": "scripted/scripted-large"}
# the `model` of the requests the agent sends once OTHER_MODEL is chosen
OTHER_MODEL_SENT = {"claude": "claude-haiku-", "opencode": "scripted-large"}
DEFAULT_MODE = {"claude": "default", "opencode": "build"}
# what each agent tells its model in plan mode ("Plan mode is active." /
# "Plan mode ACTIVE - you are in READ-ONLY phase")
PLAN_MODE_TEXT = re.compile(r"plan mode (is )?active", re.IGNORECASE)


def _cwd(stack: Stack, name: str) -> Path:
    # a session's cwd lies in its own workspace's directory (AGENT_CWD_ROOT/<workspaceId>)
    cwd = stack.data_dir / "workspaces" / stack.workspace_id / name
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd


async def _ready_session(
    stack: Stack, gw: Proc, cwd: Path, **extra: Any
) -> tuple[str, Subscriber]:
    sid = await stack.new_session(gw, cwd, **extra)
    sub = stack.subscribe(gw, sid)
    await stack.wait_ready(sub)
    return sid, sub


async def _get(stack: Stack, path: str) -> dict[str, Any]:
    """A query service read (GET), its JSON body."""
    query = await stack.query_service()
    async with stack.http.get(query.url + path) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    return body


async def _session(stack: Stack, sid: str) -> dict[str, Any]:
    session: dict[str, Any] = (await _get(stack, f"/api/sessions/{sid}"))["session"]
    return session


async def _eventually(
    read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]
) -> Any:
    """Read until `done` holds (stored in the background); the last value read."""
    value = None
    try:
        async with asyncio.timeout(WAIT):
            while True:
                value = await read()
                if done(value):
                    return value
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"not reached in {WAIT:.0f}s; last read: {value!r}")


def _option(config_options: list[dict[str, Any]], option_id: str) -> dict[str, Any]:
    found = [o for o in config_options if o.get("id") == option_id]
    assert len(found) == 1, config_options
    return found[0]


async def _turn(stack: Stack, gw: Proc, sid: str, text: str) -> dict[str, Any]:
    reply: dict[str, Any] = await stack.ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": text}
    )
    assert reply["stopReason"] == "end_turn", reply
    return reply


# --- usage: what the agent reports, stored and summed on the session -----------------


async def test_usage_reported_and_summed_on_the_session(
    stack: Stack, model: ModelServer
) -> None:
    gw = await stack.gateway("gw-usage")
    cwd = _cwd(stack, "usage")
    (cwd / "notes.txt").write_text("the usage code is 4242\n")
    sid, sub = await _ready_session(stack, gw, cwd, autoApprovePermissions=True)
    assert "usage" not in await _session(stack, sid)  # nothing reported yet

    model.script(Text("First answer"))
    first = await _turn(stack, gw, sid, "Say something")
    turn1 = model.main_requests()
    model.script(stack.agent.read(str(cwd / "notes.txt")), Text("Read it"))
    second = await _turn(stack, gw, sid, "Read notes.txt")
    turn2 = model.main_requests()[len(turn1) :]
    assert [len(turn1), len(turn2)] == [1, 2]  # the text; the tool, then the text

    # the numbers come from the model API's answers: claude sums its turn's requests,
    # opencode reports its turn's last one
    for reply, requests in ((first, turn1), (second, turn2)):
        reported = [r.reported for r in requests]
        if stack.agent.provider == "claude":
            want = {
                "inputTokens": sum(r["input"] for r in reported),
                "outputTokens": sum(r["output"] for r in reported),
            }
        else:
            want = {
                "inputTokens": reported[-1]["input"],
                "outputTokens": reported[-1]["output"],
            }
        assert {k: reply["usage"][k] for k in want} == want, (reply, reported)

    await wait_for(sub, lambda s: len(updates(s, "turn_complete")) >= 2)
    # each turn_complete carries its prompt's usage as answered
    assert [u.get("usage") for u in updates(sub, "turn_complete")] == [
        first["usage"],
        second["usage"],
    ]
    last = updates(sub, "usage_update")[-1]
    assert isinstance(last["used"], int), last
    assert last["used"] > 0, last
    want_usage = {
        "inputTokens": first["usage"]["inputTokens"] + second["usage"]["inputTokens"],
        "outputTokens": first["usage"]["outputTokens"]
        + second["usage"]["outputTokens"],
        "contextUsed": last["used"],
        "contextSize": 200000,  # both agents: the scripted model's context window
        "costAmount": last["cost"]["amount"],
        "costCurrency": "USD",
    }

    def summed(session: dict[str, Any]) -> bool:
        usage = session.get("usage") or {}
        return {k: usage.get(k) for k in want_usage} == want_usage

    session = await _eventually(lambda: _session(stack, sid), summed)
    if stack.agent.provider == "claude":  # claude reports the cache counts too (0 here)
        assert session["usage"]["cachedReadTokens"] == 0, session
    context = await _get(stack, f"/api/sessions/{sid}/context")
    assert context["usage"] == session["usage"]


# --- config options: switch the model, and it stays switched after a restart ---------


async def test_set_config_option_switches_the_model_and_a_restart_keeps_it(
    stack: Stack, model: ModelServer
) -> None:
    provider = stack.agent.provider
    gw1 = await stack.gateway("gw-model1")
    cwd = _cwd(stack, "model")
    sid, sub = await _ready_session(stack, gw1, cwd)
    context = await _get(stack, f"/api/sessions/{sid}/context")
    assert {o["id"] for o in context["configOptions"]} >= {"model", "mode"}, context
    offered = _option(context["configOptions"], "model")
    assert offered["currentValue"] == DEFAULT_MODEL[provider], offered
    assert OTHER_MODEL[provider] in [o["value"] for o in offered["options"]], offered
    assert context["model"] == DEFAULT_MODEL[provider]

    model.script(Text("on the default model"))
    await _turn(stack, gw1, sid, "First question")
    before = model.main_requests()[-1].body["model"]
    assert not before.startswith(OTHER_MODEL_SENT[provider]), before

    wrong = await stack.call(
        gw1,
        "session/set_config_option",
        {"sessionId": sid, "configId": "model", "value": "no-such-model"},
    )
    assert wrong.get("error", {}).get("code") == -32602, wrong
    assert "value" in wrong["error"]["message"], wrong
    changed = await stack.ok(
        gw1,
        "session/set_config_option",
        {"sessionId": sid, "configId": "model", "value": OTHER_MODEL[provider]},
    )
    assert (
        _option(changed["configOptions"], "model")["currentValue"]
        == OTHER_MODEL[provider]
    ), changed
    session = await _session(stack, sid)
    assert session["model"] == OTHER_MODEL[provider], session
    context = await _get(stack, f"/api/sessions/{sid}/context")
    assert (
        _option(context["configOptions"], "model")["currentValue"]
        == OTHER_MODEL[provider]
    ), context

    model.script(Text("on the other model"))
    await _turn(stack, gw1, sid, "Second question")
    sent = model.main_requests()[-1].body["model"]
    assert sent.startswith(OTHER_MODEL_SENT[provider]), sent
    if provider == "opencode":
        # its usage reports the chosen model's context window (the config says 400000)
        await wait_for(sub, lambda s: len(updates(s, "turn_complete")) >= 2)
        assert updates(sub, "usage_update")[-1]["size"] == 400000, updates(sub)

    gw1.signal(15)  # SIGTERM: drain, stop the agent, exit
    assert await gw1.wait_exit() == 0, stack.tails()
    gw2 = await stack.gateway("gw-model2")
    loaded = await stack.ok(gw2, "session/load", {"sessionId": sid})
    assert loaded["resumeMode"] == "resumed", loaded
    model.script(Text("still on the other model"))
    await _turn(stack, gw2, sid, "Third question")

    # the stored choice was applied to the resumed agent session
    sent = model.main_requests()[-1].body["model"]
    assert sent.startswith(OTHER_MODEL_SENT[provider]), sent
    assert "Second question" in model.main_requests()[-1].text()
    assert (await _session(stack, sid))["model"] == OTHER_MODEL[provider]


# --- config options: the mode ----------------------------------------------------------


async def test_set_config_option_mode_reaches_the_agent(
    stack: Stack, model: ModelServer
) -> None:
    provider = stack.agent.provider
    gw = await stack.gateway("gw-mode")
    cwd = _cwd(stack, "mode")
    sid, sub = await _ready_session(stack, gw, cwd)
    assert (await _session(stack, sid))["modeId"] == DEFAULT_MODE[provider]
    model.script(Text("building"))
    await _turn(stack, gw, sid, "Before")
    assert not PLAN_MODE_TEXT.search(model.main_requests()[-1].text())

    changed = await stack.ok(
        gw,
        "session/set_config_option",
        {"sessionId": sid, "configId": "mode", "value": "plan"},
    )

    assert _option(changed["configOptions"], "mode")["currentValue"] == "plan", changed
    session = await _session(stack, sid)
    assert session["modeId"] == "plan", session
    context = await _get(stack, f"/api/sessions/{sid}/context")
    assert _option(context["configOptions"], "mode")["currentValue"] == "plan"
    if provider == "claude":  # claude tells its client; opencode only answers the call
        await wait_for(
            sub,
            lambda s: any(
                u.get("currentModeId") == "plan"
                for u in updates(s, "current_mode_update")
            ),
        )
    model.script(Text("planning"))
    await _turn(stack, gw, sid, "After")
    told = model.main_requests()[-1].text()
    assert PLAN_MODE_TEXT.search(told), told[-2000:]


# --- session/close when the gateway stops the agent --------------------------------------

RECORDER = """#!/bin/sh
# the offline agent, with the lines the gateway sends it and those it answers copied
tee -a {sent} | {inner} "$@" | tee -a {answered}
"""


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line still being written
        if isinstance(message, dict):
            out.append(message)
    return out


async def _closed_and_answered(
    sent: Path, answered: Path, agent_id: str, n: int
) -> dict[str, Any]:
    """Wait for the n-th session/close the gateway sent for `agent_id`, and its answer."""

    def closes() -> list[dict[str, Any]]:
        return [
            m
            for m in _lines(sent)
            if m.get("method") == "session/close"
            and (m.get("params") or {}).get("sessionId") == agent_id
        ]

    try:
        async with asyncio.timeout(WAIT):
            while len(closes()) < n:
                await asyncio.sleep(0.2)
            request_id = closes()[n - 1]["id"]
            while True:
                for m in _lines(answered):
                    if m.get("id") == request_id and "method" not in m:
                        return m
                await asyncio.sleep(0.2)
    except TimeoutError:
        methods = [m.get("method") for m in _lines(sent)]
        pytest.fail(f"session/close #{n} not sent and answered; sent: {methods}")


async def test_session_close_on_idle_stop_and_disconnect(
    stack: Stack, model: ModelServer, tmp_path: Path
) -> None:
    sent, answered = tmp_path / "sent.jsonl", tmp_path / "answered.jsonl"
    recorder = tmp_path / "recording-agent"
    recorder.write_text(
        RECORDER.format(
            sent=sent, answered=answered, inner=stack.base_env[stack.agent.bin_setting]
        )
    )
    recorder.chmod(0o755)
    gw = await stack.gateway(
        "gw-close",
        AGENT_IDLE_TIMEOUT="6",
        **{stack.agent.bin_setting: str(recorder)},
    )
    cwd = _cwd(stack, "close")
    sid, sub = await _ready_session(stack, gw, cwd)
    model.script(Text("Noted: the password is OSPREY"))
    await _turn(stack, gw, sid, "Remember the password")
    agent_id = (await _session(stack, sid))["routaAgentId"]
    assert agent_id

    # idle: no turn and no open stream for AGENT_IDLE_TIMEOUT
    await sub.close()
    stack.subscribers.remove(sub)
    reply = await _closed_and_answered(sent, answered, agent_id, 1)
    assert reply.get("result") == {}, reply
    session = await _eventually(
        lambda: _session(stack, sid), lambda s: s["status"] == "closed"
    )
    assert session["acpStatus"] == "closed", session

    # the closed agent session is still the agent's to resume
    sub2 = stack.subscribe(gw, sid)  # an open stream keeps it from idling again
    loaded = await stack.ok(gw, "session/load", {"sessionId": sid})
    assert loaded["resumeMode"] == "resumed", loaded
    model.script(Text("It was OSPREY"))
    await _turn(stack, gw, sid, "What was the password?")
    assert "Remember the password" in model.main_requests()[-1].text()
    assert (await _session(stack, sid))["routaAgentId"] == agent_id

    # disconnect: the query service tells the owner, which closes, then stops the agent
    query = await stack.query_service()
    async with stack.http.post(f"{query.url}/api/sessions/{sid}/disconnect") as r:
        assert r.status == 200, await r.text()
    reply = await _closed_and_answered(sent, answered, agent_id, 2)
    assert reply.get("result") == {}, reply
    await wait_for(
        sub2,
        lambda s: any(u.get("status") == "closed" for u in updates(s, "acp_status")),
    )
    methods = [m.get("method") for m in _lines(sent)]
    # once per stop: the first agent's close, then the resumed one's
    assert methods.count("session/close") == 2, methods
    assert methods.count("session/resume") == 1, methods
