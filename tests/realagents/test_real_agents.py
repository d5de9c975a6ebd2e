"""claude-agent-acp and opencode doing real work through the gateway, offline.

Every test runs once per agent (the `agent` fixture): a real gateway process, the pinned
agent under `unshare -n`, and a scripted model endpoint telling it which tool to call with
which arguments, then what to answer. The agent runs the tools itself (Claude Code's and
opencode's own Read, Edit, Bash); the test checks what happened on disk, on the SSE
stream, in /history and in what the agent sent its model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.realagents.harness import (
    Stack,
    agent_text,
    kill_agents_under,
    processes_under,
    updates,
    wait_for,
    waiting_tool_call,
)
from tests.realagents.modelserver import API_KEY, ModelServer, Step, Text
from tests.scaleout.support import Subscriber

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.realagents, pytest.mark.timeout(400)]


def _cwd(stack: Stack, name: str) -> Path:
    # a session's cwd lies in its own workspace's directory (AGENT_CWD_ROOT/<workspaceId>)
    cwd = stack.data_dir / "workspaces" / stack.workspace_id / name
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd


async def _ready_session(
    stack: Stack, gw: Any, cwd: Path, **extra: Any
) -> tuple[str, Subscriber]:
    sid = await stack.new_session(gw, cwd, **extra)
    sub = stack.subscribe(gw, sid)
    await stack.wait_ready(sub)
    return sid, sub


def _prompt(stack: Stack, gw: Any, sid: str, text: str) -> asyncio.Task[dict[str, Any]]:
    return asyncio.create_task(
        stack.call(gw, "session/prompt", {"sessionId": sid, "prompt": text})
    )


def _turns_done(n: int) -> Any:
    return lambda s: len(updates(s, "turn_complete")) + len(updates(s, "error")) >= n


def _answer(prefix: str) -> Text:
    """Answer with the newest tool result: only what the tool really produced gets back."""
    return Text(lambda r: prefix + r.last_tool_result())


async def _sleep_running(cwd: Path) -> None:
    """Until the agent's own bash tool runs `sleep 30` in the session's cwd."""

    def running() -> bool:
        for pid in processes_under(cwd):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[:2] == [b"sleep", b"30"]:
                return True
        return False

    async with asyncio.timeout(120):
        while not running():
            await asyncio.sleep(0.1)


# --- a: read a file ----------------------------------------------------------------


async def test_reads_a_file_in_cwd(stack: Stack, model: ModelServer) -> None:
    gw = await stack.gateway("gw-a")
    cwd = _cwd(stack, "read")
    (cwd / "notes.txt").write_text("the launch code is 7261\n")
    sid, sub = await _ready_session(stack, gw, cwd)
    model.script(stack.agent.read(str(cwd / "notes.txt")), _answer("The file says: "))

    reply = await stack.ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": "What does notes.txt say?"}
    )

    assert reply["stopReason"] == "end_turn", reply
    await wait_for(sub, _turns_done(1))
    assert "7261" in agent_text(sub), updates(sub)
    first, second = model.main_requests()[:2]
    assert "What does notes.txt say?" in first.text()
    assert "7261" in second.last_tool_result()


# --- b: an edit behind a permission request -----------------------------------------


async def _edit_turn(
    stack: Stack,
    model: ModelServer,
    gw: Any,
    sid: str,
    sub: Subscriber,
    target: Path,
    decision: str,
) -> dict[str, Any]:
    """One turn: read, then edit `target` (slow → fast); answer its permission request."""
    model.steps.clear()
    model.script(
        stack.agent.read(str(target)),  # both agents edit only what they have read
        stack.agent.edit(str(target), "slow", "fast"),
        _answer("Edit result: "),
    )
    turn = _prompt(stack, gw, sid, f"Make it fast ({decision})")
    await wait_for(sub, lambda s: waiting_tool_call(s) is not None)
    asked = waiting_tool_call(sub)
    assert asked is not None
    assert target.read_text() == "speed = slow\n"  # nothing written before the answer
    assert await stack.ok(
        gw,
        "session/respond_user_input",
        {
            "sessionId": sid,
            "toolCallId": asked["toolCallId"],
            "response": {"decision": decision},
        },
    ) == {"ok": True}
    reply = await turn
    assert "error" not in reply, (reply, stack.tails())
    return asked


async def test_edit_asks_permission_deny_then_allow(
    stack: Stack, model: ModelServer
) -> None:
    gw = await stack.gateway("gw-b")
    cwd = _cwd(stack, "edit")
    target = cwd / "settings.ini"
    target.write_text("speed = slow\n")
    sid, sub = await _ready_session(stack, gw, cwd)

    denied = await _edit_turn(stack, model, gw, sid, sub, target, "deny")

    assert target.read_text() == "speed = slow\n"
    await wait_for(sub, _turns_done(1))
    if stack.agent.provider == "claude":
        # Claude Code tells its model: the refusal is the tool's result
        told = model.main_requests()[-1].last_tool_result()
        assert "refused permission" in told, told
    else:
        # opencode marks its own tool call failed (the gateway's carries _meta.permission)
        told_updates = [
            u
            for u in updates(sub, "tool_call_update")
            if u["toolCallId"] == denied["toolCallId"]
            and u.get("status") == "failed"
            and "permission" not in (u.get("_meta") or {})
        ]
        assert told_updates, updates(sub, "tool_call_update")

    await _edit_turn(stack, model, gw, sid, sub, target, "approve")

    assert target.read_text() == "speed = fast\n"
    await wait_for(sub, lambda s: "Edit result: " in agent_text(s))


# --- c: shell commands through the agent's own bash tool ----------------------------


async def test_shell_commands(stack: Stack, model: ModelServer) -> None:
    gw = await stack.gateway("gw-c")
    cwd = _cwd(stack, "shell")
    (cwd / "data.txt").write_text("alpha\nbeta\n")
    sid, sub = await _ready_session(stack, gw, cwd)
    model.script(
        stack.agent.bash("cat data.txt"),  # read-only: runs without asking
        stack.agent.bash("touch made-by-agent.txt"),  # writes: asks first
        _answer("Done: "),
    )

    turn = _prompt(stack, gw, sid, "Look at data.txt, then create made-by-agent.txt")
    await wait_for(sub, lambda s: waiting_tool_call(s) is not None)
    asked = waiting_tool_call(sub)
    assert asked is not None
    assert "touch" in str(asked.get("rawInput") or asked.get("title")), asked
    # the read-only command already ran, without a permission request
    assert len(updates(sub, "tool_call")) >= 2
    assert "beta" in model.main_requests()[1].last_tool_result()
    assert not (cwd / "made-by-agent.txt").exists()
    await stack.ok(
        gw,
        "session/respond_user_input",
        {
            "sessionId": sid,
            "toolCallId": asked["toolCallId"],
            "response": {"decision": "approve"},
        },
    )
    reply = await turn

    assert reply.get("result", {}).get("stopReason") == "end_turn", reply
    assert (cwd / "made-by-agent.txt").exists()
    asks = [u for u in updates(sub, "tool_call") if u.get("status") == "waiting"]
    assert len(asks) == 1, asks


# --- d: plan, tool calls and usage, stored in order, /history as streamed -----------


async def test_events_stored_in_order_and_history_matches_stream(
    stack: Stack, model: ModelServer
) -> None:
    gw = await stack.gateway("gw-d")
    cwd = _cwd(stack, "events")
    (cwd / "todo.md").write_text("- ship it\n")
    sid, sub = await _ready_session(stack, gw, cwd)
    steps: list[Step] = []
    if stack.agent.plan is not None:
        steps.append(
            stack.agent.plan([("Read todo.md", "in_progress"), ("Report", "pending")])
        )
    steps += [stack.agent.read(str(cwd / "todo.md")), _answer("Plan: ")]
    model.script(*steps)

    reply = await stack.ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": "Plan it"}
    )

    assert reply["stopReason"] == "end_turn"
    await wait_for(sub, _turns_done(1))
    history = await stack.history(sid)
    await wait_for(sub, lambda s: len(s.events) >= len(history))
    streamed = [e for _, e in sub.events]
    assert streamed[: len(history)] == history
    assert [e["eventId"] for e in history] == [
        str(i) for i in range(1, len(history) + 1)
    ]
    kinds = [e["update"]["sessionUpdate"] for e in history]
    wanted = [
        "user_message",
        "tool_call",
        "tool_call_update",
        "usage_update",
        "turn_complete",
    ]
    if stack.agent.plan is not None:
        wanted.insert(1, "plan")
    else:
        assert (
            "plan" not in kinds
        )  # opencode has no plan update: its todos are tool calls
    positions = [kinds.index(k) for k in wanted]
    assert positions == sorted(positions), kinds
    assert kinds.index("usage_update") > max(
        i for i, k in enumerate(kinds) if k == "tool_call_update"
    ), kinds
    usage = updates(sub, "usage_update")[-1]
    assert isinstance(usage["used"], int), usage
    assert usage["size"] > 0, usage
    if stack.agent.plan is not None:
        plan = updates(sub, "plan")[0]
        assert [e["content"] for e in plan["entries"]] == ["Read todo.md", "Report"]


# --- e: cancel in the middle of a long tool call ------------------------------------


async def test_cancel_during_a_long_tool_call(stack: Stack, model: ModelServer) -> None:
    gw = await stack.gateway("gw-e")
    cwd = _cwd(stack, "cancel")
    sid, sub = await _ready_session(stack, gw, cwd, autoApprovePermissions=True)
    model.script(stack.agent.bash("sleep 30"), Text("slept"))

    turn = _prompt(stack, gw, sid, "Wait a while")
    await _sleep_running(cwd)
    assert await stack.ok(gw, "session/cancel", {"sessionId": sid}) == {}
    reply = await turn

    assert reply.get("result", {}).get("stopReason") == "cancelled", reply
    # the same agent process answers again. claude-agent-acp 0.23.1 ends the first prompt
    # after an interrupt at once (on the interrupted run's stale "idle"), without asking
    # its model: its answer then comes with the prompt after that.
    model.steps.clear()
    model.script(*[Text(lambda r: "Still here: " + r.user_texts()[-1])] * 3)
    for attempt in ("Hello?", "Hello again?"):
        again = await stack.ok(
            gw, "session/prompt", {"sessionId": sid, "prompt": attempt}
        )
        assert again["stopReason"] == "end_turn"
        await wait_for(sub, _turns_done(1 + (2 if attempt == "Hello again?" else 1)))
        if "Still here" in agent_text(sub):
            break
    assert "Still here" in agent_text(sub), updates(sub)
    statuses = [u.get("status") for u in updates(sub, "acp_status")]
    assert statuses.count("ready") == 1, statuses  # not restarted in between


# --- f: resume after the gateway restarts -------------------------------------------


async def test_resume_after_gateway_restart(stack: Stack, model: ModelServer) -> None:
    gw1 = await stack.gateway("gw-f1")
    cwd = _cwd(stack, "resume")
    sid, _sub = await _ready_session(stack, gw1, cwd)
    assert (
        await stack.ok(gw1, "session/set_mode", {"sessionId": sid, "modeId": "plan"})
        == {}
    )
    model.script(Text("Noted: the password is PELICAN"))
    first = await stack.ok(
        gw1, "session/prompt", {"sessionId": sid, "prompt": "Remember the password"}
    )
    assert first["stopReason"] == "end_turn"

    gw1.signal(15)  # SIGTERM: drain, stop the agent, exit
    assert await gw1.wait_exit() == 0, stack.tails()
    gw2 = await stack.gateway("gw-f2")
    loaded = await stack.ok(gw2, "session/load", {"sessionId": sid})
    # session/resume is preferred when advertised: both claude-agent-acp 0.23.1 and
    # opencode 1.18.33 advertise it
    assert loaded["resumeMode"] == "resumed", loaded
    assert loaded["acpStatus"] == "ready"
    model.script(Text("It was PELICAN"))
    second = await stack.ok(
        gw2, "session/prompt", {"sessionId": sid, "prompt": "What was the password?"}
    )

    assert second["stopReason"] == "end_turn"
    request = model.main_requests()[-1]
    # the agent's own memory of the conversation, not a replay by the gateway
    assert "Remember the password" in request.text()
    assert "PELICAN" in request.text()
    assert "What was the password?" in request.text()


# --- g: failover to another gateway, same cwd, files intact -------------------------


async def test_failover_keeps_cwd_and_conversation(
    stack: Stack, model: ModelServer
) -> None:
    gw1 = await stack.gateway("gw-g1")
    gw2 = await stack.gateway("gw-g2")
    cwd = _cwd(stack, "failover")
    target = cwd / "report.txt"
    target.write_text("status: draft\n")
    sid, _sub = await _ready_session(stack, gw1, cwd, autoApprovePermissions=True)
    model.script(
        stack.agent.read(str(target)),
        stack.agent.edit(str(target), "draft", "final"),
        Text("Marked it final"),
    )
    first = await stack.ok(
        gw1, "session/prompt", {"sessionId": sid, "prompt": "Finalise the report"}
    )
    assert first["stopReason"] == "end_turn"
    assert target.read_text() == "status: final\n"

    model.script(stack.agent.bash("sleep 30"), Text("never"))
    doomed = _prompt(stack, gw1, sid, "Now wait")
    await _sleep_running(cwd)
    gw1.signal(9)  # the owner dies mid-turn, with its agents (as a pod would)
    await gw1.wait_exit()
    kill_agents_under(cwd)
    with pytest.raises(Exception):  # noqa: B017 - the connection just breaks
        await doomed

    model.steps.clear()
    model.script(stack.agent.read(str(target)), _answer("After failover: "))
    third = await stack.ok(
        gw2, "session/prompt", {"sessionId": sid, "prompt": "Read it again"}
    )

    assert third["stopReason"] == "end_turn"
    assert target.read_text() == "status: final\n"
    request = model.main_requests()[-1]
    assert "final" in request.last_tool_result()
    assert "Finalise the report" in request.text()  # the conversation went on
    sub2 = stack.subscribe(gw2, sid)
    await wait_for(sub2, lambda s: "After failover: " in agent_text(s))
    assert "status: final" in agent_text(sub2)
    owner = await stack.ok(gw2, "session/load", {"sessionId": sid})
    assert owner["resumeMode"] == "attached"


# --- credentials ------------------------------------------------------------------


async def test_missing_credentials_answer_32002(
    stack_without_credentials: Stack, model: ModelServer
) -> None:
    """Missing: known before any agent starts (session/new, nothing stored). Refused:
    the agent's first model call is refused and its own words come back."""
    stack = stack_without_credentials
    gw = await stack.gateway("gw-nocred")
    cwd = _cwd(stack, "nocred")
    variable = f"AGENT_ENV_{stack.agent.provider.upper()}"
    if stack.credentials == "missing":
        started = time.monotonic()
        reply = await stack.call(
            gw,
            "session/new",
            {
                "workspaceId": stack.workspace_id,
                "provider": stack.agent.provider,
                "cwd": str(cwd),
            },
        )
        took = time.monotonic() - started
        assert "error" in reply, reply
        assert reply["error"]["code"] == -32002, reply
        assert variable in reply["error"]["message"]
        assert "API_KEY" in reply["error"]["message"]  # names what to set
        assert not model.main_requests()  # no agent ever asked the model
        logger.info("%s: missing: -32002 after %.2fs", stack.agent.provider, took)
        return
    sid, _sub = await _ready_session(stack, gw, cwd)
    model.script(Text("unreachable"))

    started = time.monotonic()
    reply = await stack.call(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    took = time.monotonic() - started

    assert "error" in reply, reply
    error = reply["error"]
    assert error["code"] == -32002, error
    agent_error = error["data"]["agentError"]
    assert agent_error["message"] in error["message"]  # the agent's own words
    assert variable in error["message"]
    # a generous bound: the point is no model time-out (64 s before), not a benchmark
    assert took < 20, f"answered after {took:.1f}s"
    logger.info(
        "%s: refused: -32002 after %.2fs: %s",
        stack.agent.provider,
        took,
        error["message"],
    )
    log = stack.procs[0].tail()
    assert f"session={sid} provider={stack.agent.provider} method=session/prompt" in log


# --- claude's credentials through ACP authenticate ----------------------------------


def _environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


async def test_claude_gateway_auth_keeps_the_key_out_of_its_environment(
    claude_stack: Stack, model: ModelServer
) -> None:
    stack = claude_stack
    # AGENT_ENV_CLAUDE still names the key: with gateway auth it is withheld anyway
    gw = await stack.gateway("gw-auth", AGENT_AUTH_CLAUDE="gateway")
    cwd = _cwd(stack, "gateway-auth")
    (cwd / "notes.txt").write_text("the gateway code is 5150\n")
    sid, sub = await _ready_session(stack, gw, cwd)
    model.script(stack.agent.read(str(cwd / "notes.txt")), _answer("It says: "))

    reply = await stack.ok(
        gw, "session/prompt", {"sessionId": sid, "prompt": "What does notes.txt say?"}
    )

    assert reply["stopReason"] == "end_turn", reply
    await wait_for(sub, _turns_done(1))
    assert "5150" in agent_text(sub), updates(sub)
    # the key reached the model API as a header the agent was handed through ACP
    first = model.main_requests()[0]
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert headers.get("x-api-key") == API_KEY
    # and the adapter's own environment never held it
    adapters = []
    for pid in processes_under(cwd):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = _environ(pid)
        except OSError:
            continue
        if b"claude-agent-acp" in cmdline and b"ANTHROPIC_CUSTOM_HEADERS" not in env:
            adapters.append(pid)
            assert b"ANTHROPIC_API_KEY" not in env, cmdline
            assert API_KEY.encode() not in b"".join(env.values()), cmdline
    assert adapters, "no claude-agent-acp process found under the session's cwd"
