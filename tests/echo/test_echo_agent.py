"""The echo agent driven as a real subprocess through the SDK's client side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from acp import RequestError, text_block
from acp.schema import ClientCapabilities, ResourceContentBlock

from tests.echo.harness import Echo, spawn_echo

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL_OPTION = {
    "id": "model",
    "name": "Model",
    "category": "model",
    "type": "select",
    "currentValue": "echo-small",
    "options": [
        {"value": "echo-small", "name": "Echo small"},
        {"value": "echo-large", "name": "Echo large"},
    ],
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def echo() -> AsyncIterator[Echo]:
    """One agent process for the module; each test works in its own session."""
    async with spawn_echo() as agent:
        await agent.conn.initialize(protocol_version=1)
        yield agent


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    return tmp_path


def chunks(
    updates: list[dict[str, Any]], kind: str = "agent_message_chunk"
) -> list[dict]:
    return [u for u in updates if u["sessionUpdate"] == kind]


def texts(
    updates: list[dict[str, Any]], kind: str = "agent_message_chunk"
) -> list[str]:
    return [u["content"]["text"] for u in chunks(updates, kind)]


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# -- initialize and session/new -----------------------------------------------------


async def test_initialize_answers_version_1_and_identity(echo: Echo) -> None:
    response = await echo.conn.initialize(protocol_version=7)
    raw = echo.client.responses[-1]["result"]
    assert response.protocol_version == 1
    assert raw["agentInfo"] == {"name": "echo", "title": "Echo", "version": "0.1.0"}
    assert raw["agentCapabilities"]["loadSession"] is False
    assert raw["agentCapabilities"]["promptCapabilities"] == {
        "image": False,
        "audio": False,
        "embeddedContext": False,
    }
    assert raw["agentCapabilities"]["_meta"]["resumeCapabilities"] == {
        "supported": True,
        "mode": "replay",
    }


async def test_new_session_offers_modes_and_model(echo: Echo, cwd: Path) -> None:
    first = await echo.conn.new_session(cwd=str(cwd), mcp_servers=[])
    raw = echo.client.responses[-1]["result"]
    second = await echo.new_session(cwd)
    assert first.session_id != second
    assert is_uuid(first.session_id)
    assert raw["modes"] == {
        "currentModeId": "chat",
        "availableModes": [
            {"id": "chat", "name": "Chat"},
            {"id": "plan", "name": "Plan"},
        ],
    }
    assert raw["configOptions"] == [MODEL_OPTION]


async def test_new_session_sends_no_unsolicited_update(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    await echo.conn.set_session_mode(session_id=session_id, mode_id="plan")
    assert await echo.prompt(session_id, "hi") == "end_turn"
    # Updates arrive in wire order, so anything sent by new_session or set_mode
    # would come before the prompt's own chunks.
    assert [u["sessionUpdate"] for u in echo.client.session_updates(session_id)] == [
        "agent_message_chunk",
        "agent_message_chunk",
    ]


async def test_load_session_is_not_offered(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    with pytest.raises(RequestError) as err:
        await echo.conn.load_session(
            cwd=str(cwd), session_id=session_id, mcp_servers=[]
        )
    assert err.value.code == -32601


# -- modes and the model option ------------------------------------------------------


async def test_set_mode_accepts_chat_and_plan(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    await echo.conn.set_session_mode(session_id=session_id, mode_id="plan")
    assert echo.client.responses[-1]["result"] == {}
    await echo.conn.set_session_mode(session_id=session_id, mode_id="chat")
    assert echo.client.responses[-1]["result"] == {}


async def test_set_mode_unknown_is_invalid_params_naming_mode_id(
    echo: Echo, cwd: Path
) -> None:
    session_id = await echo.new_session(cwd)
    with pytest.raises(RequestError) as err:
        await echo.conn.set_session_mode(session_id=session_id, mode_id="code")
    assert err.value.code == -32602
    assert "modeId" in str(err.value)
    assert "code" in str(err.value)


async def test_set_config_option_model_returns_complete_options(
    echo: Echo, cwd: Path
) -> None:
    session_id = await echo.new_session(cwd)
    await echo.conn.set_config_option(
        config_id="model", session_id=session_id, value="echo-large"
    )
    assert echo.client.responses[-1]["result"] == {
        "configOptions": [{**MODEL_OPTION, "currentValue": "echo-large"}]
    }


@pytest.mark.parametrize(
    ("config_id", "value"),
    [("model", "gpt-5"), ("effort", "high"), ("model", True)],
)
async def test_set_config_option_unknown_names_model(
    echo: Echo, cwd: Path, config_id: str, value: Any
) -> None:
    session_id = await echo.new_session(cwd)
    with pytest.raises(RequestError) as err:
        await echo.conn.set_config_option(
            config_id=config_id, session_id=session_id, value=value
        )
    assert err.value.code == -32602
    assert "model" in str(err.value)


async def test_unknown_model_error_lists_offered_models(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    with pytest.raises(RequestError) as err:
        await echo.conn.set_config_option(
            config_id="model", session_id=session_id, value="x"
        )
    assert str(err.value) == "Unknown model: x (echo offers echo-small, echo-large)"
    assert "data" not in echo.client.responses[-1]["error"]


async def test_legacy_set_model(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    result = await echo.raw_request(
        "session/set_model", {"sessionId": session_id, "modelId": "echo-large"}
    )
    assert result == {"configOptions": [{**MODEL_OPTION, "currentValue": "echo-large"}]}
    with pytest.raises(RequestError) as err:
        await echo.raw_request(
            "session/set_model", {"sessionId": session_id, "modelId": "gpt-5"}
        )
    assert err.value.code == -32602
    assert "model" in str(err.value)


async def test_unknown_session_is_invalid_params(echo: Echo) -> None:
    with pytest.raises(RequestError) as err:
        await echo.prompt("no-such-session", "hi")
    assert err.value.code == -32602
    assert "sessionId" in str(err.value)


# -- the echo ------------------------------------------------------------------------


async def test_prompt_echoes_one_chunk_per_word(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "hello world") == "end_turn"
    updates = echo.client.session_updates(session_id)
    assert texts(updates) == ["echo: ", "hello ", "world"]
    message_ids = {u["messageId"] for u in updates}
    assert len(message_ids) == 1
    assert is_uuid(message_ids.pop())
    assert all(u["content"]["type"] == "text" for u in updates)


@pytest.mark.parametrize(
    "text", ["  spaced   out  ", "tab\tand\nnewline", "one", "unicode — ünï  ✓ "]
)
async def test_chunks_concatenate_exactly(echo: Echo, cwd: Path, text: str) -> None:
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, text)
    parts = texts(echo.client.session_updates(session_id))
    assert "".join(parts) == f"echo: {text}"
    assert all(len(part.split()) == 1 for part in parts)


async def test_each_message_gets_a_fresh_message_id(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, "one")
    await echo.prompt(session_id, "two")
    ids = [u["messageId"] for u in echo.client.session_updates(session_id)]
    assert len(ids) == 4
    assert ids[0] == ids[1] != ids[2] == ids[3]


async def test_prompt_ignores_non_text_blocks(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    link = ResourceContentBlock(type="resource_link", uri="file:///x", name="x")
    await echo.conn.prompt(
        session_id=session_id,
        prompt=[text_block("hello "), link, text_block("world")],
    )
    assert (
        "".join(texts(echo.client.session_updates(session_id))) == "echo: hello world"
    )


async def test_unknown_slash_word_is_echoed(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, "/nope x")
    assert "".join(texts(echo.client.session_updates(session_id))) == "echo: /nope x"


# -- commands ------------------------------------------------------------------------


async def test_think(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/think deep thoughts here") == "end_turn"
    updates = echo.client.session_updates(session_id)
    kinds = [u["sessionUpdate"] for u in updates]
    assert kinds == ["agent_thought_chunk"] * 3 + ["agent_message_chunk"] * 4
    assert texts(updates, "agent_thought_chunk") == ["deep ", "thoughts ", "here"]
    assert "".join(texts(updates)) == "echo: deep thoughts here"
    assert len({u["messageId"] for u in chunks(updates)}) == 1


async def test_plan(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/plan") == "end_turn"
    updates = echo.client.session_updates(session_id)
    assert [u["sessionUpdate"] for u in updates] == ["plan", "plan"]
    first, second = updates[0]["entries"], updates[1]["entries"]
    assert len(first) == 3
    assert [e["status"] for e in first] == ["pending"] * 3
    assert [e["status"] for e in second] == ["completed"] * 3
    assert {e["priority"] for e in first + second} == {"medium"}
    assert [e["content"] for e in first] == [e["content"] for e in second]


async def test_tool(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/tool") == "end_turn"
    assert await echo.prompt(session_id, "/tool") == "end_turn"
    updates = echo.client.session_updates(session_id)
    assert [u["sessionUpdate"] for u in updates] == [
        "tool_call",
        "tool_call_update",
        "tool_call_update",
    ] * 2
    start, progress, done = updates[:3]
    assert start["kind"] == "read"
    assert start["status"] == "pending"
    assert start["title"]
    assert start["locations"] == [{"path": str(cwd / "README.md")}]
    assert progress == {
        "sessionUpdate": "tool_call_update",
        "toolCallId": start["toolCallId"],
        "status": "in_progress",
    }
    assert done["toolCallId"] == start["toolCallId"]
    assert done["status"] == "completed"
    [content] = done["content"]
    assert content["type"] == "content"
    assert content["content"]["type"] == "text"
    assert content["content"]["text"]
    assert updates[3]["toolCallId"] != start["toolCallId"]


@pytest.mark.parametrize(
    ("choice", "said", "stop_reason"),
    [
        ("allow_once", "approved", "end_turn"),
        ("reject_once", "denied", "end_turn"),
        ("cancelled", "denied", "cancelled"),
    ],
)
async def test_permission(
    echo: Echo, cwd: Path, choice: str, said: str, stop_reason: str
) -> None:
    session_id = await echo.new_session(cwd)
    echo.client.permission[session_id] = choice
    assert await echo.prompt(session_id, "/permission") == stop_reason
    assert texts(echo.client.session_updates(session_id)) == [said]
    [request] = [
        r
        for r in echo.client.requests
        if r["method"] == "session/request_permission"
        and r["params"]["sessionId"] == session_id
    ]
    assert request["params"]["options"] == [
        {"optionId": "allow_once", "name": "Allow", "kind": "allow_once"},
        {"optionId": "reject_once", "name": "Reject", "kind": "reject_once"},
    ]
    assert request["params"]["toolCall"]["toolCallId"]


async def test_read_says_first_line(echo: Echo, cwd: Path) -> None:
    (cwd / "notes.txt").write_text("first line here\nsecond line\n")
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, f"/read {cwd / 'notes.txt'}") == "end_turn"
    assert "".join(texts(echo.client.session_updates(session_id))) == "first line here"


async def test_read_relative_path_is_resolved_in_cwd(echo: Echo, cwd: Path) -> None:
    (cwd / "rel.txt").write_text("relative\n")
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, "/read rel.txt")
    [request] = [
        r
        for r in echo.client.requests
        if r["method"] == "fs/read_text_file" and r["params"]["sessionId"] == session_id
    ]
    assert request["params"]["path"] == str(cwd / "rel.txt")
    assert "".join(texts(echo.client.session_updates(session_id))) == "relative"


async def test_read_says_the_error(echo: Echo, cwd: Path) -> None:
    path = str(cwd / "secret.txt")
    echo.client.fs_errors[path] = f"Path outside the session cwd: {path}"
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, f"/read {path}") == "end_turn"
    said = "".join(texts(echo.client.session_updates(session_id)))
    assert said == f"Path outside the session cwd: {path}"


async def test_write(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    target = cwd / "out.txt"
    assert await echo.prompt(session_id, f"/write {target} hello  world") == "end_turn"
    assert target.read_text() == "hello  world"
    assert texts(echo.client.session_updates(session_id)) == ["written"]


async def test_write_says_the_error(echo: Echo, cwd: Path) -> None:
    path = str(cwd / "ro.txt")
    echo.client.fs_errors[path] = "Read-only file"
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, f"/write {path} x")
    assert "".join(texts(echo.client.session_updates(session_id))) == "Read-only file"
    assert not Path(path).exists()


async def test_slow_sends_a_chunk_per_tick(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/slow 0.3") == "end_turn"
    updates = echo.client.session_updates(session_id)
    assert len(updates) == 3
    assert len({u["messageId"] for u in updates}) == 1


async def test_cancel_ends_slow_with_cancelled(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    turn = asyncio.create_task(echo.prompt(session_id, "/slow 60"))
    await echo.client.wait_for(lambda: bool(echo.client.session_updates(session_id)))
    await echo.conn.cancel(session_id=session_id)
    async with asyncio.timeout(10):  # hang guard: without the cancel this runs 60 s
        assert await turn == "cancelled"
    # The session is usable again afterwards.
    before = len(echo.client.session_updates(session_id))
    assert await echo.prompt(session_id, "again") == "end_turn"
    assert texts(echo.client.session_updates(session_id)[before:]) == [
        "echo: ",
        "again",
    ]


async def test_cancel_only_touches_its_own_session(echo: Echo, cwd: Path) -> None:
    slow = await echo.new_session(cwd)
    other = await echo.new_session(cwd)
    turn = asyncio.create_task(echo.prompt(slow, "/slow 60"))
    await echo.client.wait_for(lambda: bool(echo.client.session_updates(slow)))
    await echo.conn.cancel(session_id=other)  # idle: nothing to cancel
    assert await echo.prompt(other, "still here") == "end_turn"
    assert not turn.done()
    await echo.conn.cancel(session_id=slow)
    async with asyncio.timeout(10):
        assert await turn == "cancelled"


async def test_second_prompt_while_running_is_refused(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    turn = asyncio.create_task(echo.prompt(session_id, "/slow 60"))
    await echo.client.wait_for(lambda: bool(echo.client.session_updates(session_id)))
    with pytest.raises(RequestError) as err:
        await echo.prompt(session_id, "meanwhile")
    assert err.value.code == -32000
    await echo.conn.cancel(session_id=session_id)
    async with asyncio.timeout(10):
        assert await turn == "cancelled"


async def test_cancel_while_permission_pending(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    echo.client.permission[session_id] = "hold"
    echo.client.permission_asked.clear()
    turn = asyncio.create_task(echo.prompt(session_id, "/permission"))
    async with asyncio.timeout(10):
        await echo.client.permission_asked.wait()
    await echo.conn.cancel(session_id=session_id)
    async with asyncio.timeout(10):
        assert await turn == "cancelled"


async def test_fail_answers_internal_error(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    with pytest.raises(RequestError) as err:
        await echo.prompt(session_id, "/fail")
    assert err.value.code == -32603
    assert str(err.value) == "echo: asked to fail"
    raw = next(
        r["error"]
        for r in reversed(echo.client.responses)
        if r.get("error", {}).get("message") == "echo: asked to fail"
    )
    assert raw == {"code": -32603, "message": "echo: asked to fail"}


async def test_unknown_sends_a_custom_update_kind(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/unknown") == "end_turn"
    assert echo.client.session_updates(session_id) == [
        {"sessionUpdate": "echo_custom", "value": 1}
    ]


async def test_flood(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/flood 200") == "end_turn"
    updates = echo.client.session_updates(session_id)
    assert len(updates) == 200
    assert {u["sessionUpdate"] for u in updates} == {"agent_message_chunk"}
    assert len({u["messageId"] for u in updates}) == 1


@pytest.mark.parametrize(
    "prompt",
    [
        "/slow abc",
        "/slow -1",
        "/slow nan",
        "/flood x",
        "/flood -3",
        "/stderr 1.5",
        "/think",
        "/read",
        "/write",
        "/terminal",
    ],
)
async def test_invalid_arguments_answer_usage(
    echo: Echo, cwd: Path, prompt: str
) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, prompt) == "end_turn"
    said = "".join(texts(echo.client.session_updates(session_id)))
    assert said.startswith(f"usage: {prompt.split()[0]}")


# -- /usage, /terminal, /elicit --------------------------------------------------------


def requests_of(echo: Echo, session_id: str, prefix: str) -> list[dict[str, Any]]:
    """The agent's requests to us whose method starts with `prefix`, for one session."""
    return [
        r
        for r in echo.client.requests
        if r["method"].startswith(prefix) and r["params"].get("sessionId") == session_id
    ]


async def test_usage_reports_context_then_turn_tokens(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    response = await echo.conn.prompt(
        session_id=session_id, prompt=[text_block("/usage")]
    )
    assert response.stop_reason == "end_turn"
    assert echo.client.session_updates(session_id) == [
        {
            "sessionUpdate": "usage_update",
            "used": 1200,
            "size": 200000,
            "cost": {"amount": 0.01, "currency": "USD"},
        }
    ]
    raw = echo.client.responses[-1]["result"]
    assert raw == {
        "stopReason": "end_turn",
        "usage": {"totalTokens": 30, "inputTokens": 20, "outputTokens": 10},
    }


async def test_other_prompts_report_no_usage(echo: Echo, cwd: Path) -> None:
    session_id = await echo.new_session(cwd)
    await echo.prompt(session_id, "/usage")
    assert await echo.prompt(session_id, "hello") == "end_turn"
    assert echo.client.responses[-1]["result"] == {"stopReason": "end_turn"}


async def test_terminal_without_the_capability_says_no_terminal(
    echo: Echo, cwd: Path
) -> None:
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/terminal echo hello") == "end_turn"
    assert "".join(texts(echo.client.session_updates(session_id))) == "no terminal"
    assert requests_of(echo, session_id, "terminal/") == []


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def echo_terminals() -> AsyncIterator[Echo]:
    """An agent whose client advertised terminals in initialize."""
    async with spawn_echo() as agent:
        await agent.conn.initialize(
            protocol_version=1, client_capabilities=ClientCapabilities(terminal=True)
        )
        yield agent


async def test_terminal_create_wait_output_release(
    echo_terminals: Echo, cwd: Path
) -> None:
    echo = echo_terminals
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/terminal echo hello world") == "end_turn"
    calls = requests_of(echo, session_id, "terminal/")
    assert [c["method"] for c in calls] == [
        "terminal/create",
        "terminal/wait_for_exit",
        "terminal/output",
        "terminal/release",
    ]
    assert calls[0]["params"] == {
        "sessionId": session_id,
        "command": "echo",
        "args": ["hello", "world"],
        "cwd": str(cwd),
    }
    said = "".join(texts(echo.client.session_updates(session_id)))
    assert said == "hello world\nexit 0"


async def test_terminal_says_the_exit_code(echo_terminals: Echo, cwd: Path) -> None:
    session_id = await echo_terminals.new_session(cwd)
    assert await echo_terminals.prompt(session_id, "/terminal false") == "end_turn"
    said = "".join(texts(echo_terminals.client.session_updates(session_id)))
    assert said == "exit 1"


async def test_terminal_says_the_create_error(echo_terminals: Echo, cwd: Path) -> None:
    session_id = await echo_terminals.new_session(cwd)
    await echo_terminals.prompt(session_id, "/terminal no-such-command-here x")
    said = "".join(texts(echo_terminals.client.session_updates(session_id)))
    assert said.startswith("cannot run no-such-command-here")


async def test_cancel_releases_a_running_terminal(
    echo_terminals: Echo, cwd: Path
) -> None:
    echo = echo_terminals
    session_id = await echo.new_session(cwd)
    turn = asyncio.create_task(echo.prompt(session_id, "/terminal sleep 60"))
    await echo.client.wait_for(
        lambda: bool(requests_of(echo, session_id, "terminal/wait_for_exit"))
    )
    (waiting,) = requests_of(echo, session_id, "terminal/wait_for_exit")
    terminal_id = waiting["params"]["terminalId"]
    await echo.conn.cancel(session_id=session_id)
    async with asyncio.timeout(10):  # hang guard: without the cancel this runs 60 s
        assert await turn == "cancelled"
    assert terminal_id in echo.client.released
    assert echo.client.terminals[terminal_id].returncode is not None


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ({"action": "accept", "content": {"name": "Ada"}}, "hello Ada"),
        ({"action": "decline"}, "declined"),
        ({"action": "cancel"}, "cancelled"),
    ],
)
async def test_elicit(
    echo: Echo,
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: dict[str, Any],
    said: str,
) -> None:
    monkeypatch.setattr(echo.client, "elicitation", answer)
    session_id = await echo.new_session(cwd)
    assert await echo.prompt(session_id, "/elicit") == "end_turn"
    assert "".join(texts(echo.client.session_updates(session_id))) == said
    (request,) = requests_of(echo, session_id, "elicitation/")
    assert request["method"] == "elicitation/create"
    params = request["params"]
    assert params["mode"] == "form"
    assert params["requestedSchema"]["type"] == "object"
    assert params["requestedSchema"]["properties"]["name"]["type"] == "string"
    assert params["requestedSchema"]["required"] == ["name"]


async def test_cancel_while_elicitation_pending(
    echo: Echo, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(echo.client, "elicitation", None)  # never answered
    session_id = await echo.new_session(cwd)
    turn = asyncio.create_task(echo.prompt(session_id, "/elicit"))
    await echo.client.wait_for(
        lambda: bool(requests_of(echo, session_id, "elicitation/"))
    )
    await echo.conn.cancel(session_id=session_id)
    async with asyncio.timeout(10):
        assert await turn == "cancelled"


# -- process-level behaviour (own processes) -----------------------------------------


async def test_stderr_writes_kib_and_stdout_stays_acp(cwd: Path) -> None:
    async with spawn_echo() as agent:
        await agent.conn.initialize(protocol_version=1)
        session_id = await agent.new_session(cwd)
        assert await agent.prompt(session_id, "/stderr 300") == "end_turn"
        await agent.wait_stderr(300 * 1024)
        assert len(agent.stderr) == 300 * 1024
        assert agent.stderr.count(b"echo: stderr filler") == 300 * 16
        # Still answering ACP afterwards: nothing leaked onto stdout.
        assert await agent.prompt(session_id, "ok") == "end_turn"


async def test_crash_sends_one_chunk_then_exits_3(cwd: Path) -> None:
    async with spawn_echo() as agent:
        await agent.conn.initialize(protocol_version=1)
        session_id = await agent.new_session(cwd)
        with pytest.raises(ConnectionError):
            await agent.prompt(session_id, "/crash")
        async with asyncio.timeout(10):
            assert await agent.process.wait() == 3
        assert len(chunks(agent.client.session_updates(session_id))) == 1


async def test_exits_cleanly_when_stdin_closes(cwd: Path) -> None:
    async with spawn_echo() as agent:
        await agent.conn.initialize(protocol_version=1)
        process = agent.process
        assert process.stdin is not None
        process.stdin.close()
        async with asyncio.timeout(10):
            assert await process.wait() == 0
