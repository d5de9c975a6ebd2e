"""One prompt turn: what echo says, and its slash commands (docs/agents.md, "The echo agent")."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from acp import RequestError
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    ContentToolCallContent,
    Cost,
    DeniedOutcome,
    ElicitationSchema,
    ElicitationStringPropertySchema,
    PermissionOption,
    PlanEntry,
    PlanEntryStatus,
    StopReason,
    TextContentBlock,
    ToolCallLocation,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    Usage,
    UsageUpdate,
)

from services.echo.errors import INTERNAL_ERROR, EchoError
from services.echo.peer import Peer
from services.echo.text import split_command, word_chunks

SLOW_TICK = 0.1
MAX_SLOW_SECONDS = 3600.0
MAX_FLOOD = 1_000_000
MAX_STDERR_KIB = 64 * 1024
CRASH_EXIT_STATUS = 3
PLAN_STEPS = ("Read the prompt", "Think it over", "Echo it back")
# The fixed figures of /usage (context in use, window, cost; the turn's tokens).
USAGE_REPORT = UsageUpdate(
    session_update="usage_update",
    used=1200,
    size=200000,
    cost=Cost(amount=0.01, currency="USD"),
)
TURN_USAGE = Usage(total_tokens=30, input_tokens=20, output_tokens=10)


@dataclass(slots=True)
class Turn:
    """The context of one prompt: which session, where, and who to talk to."""

    session_id: str
    cwd: str
    peer: Peer
    usage: Usage | None = field(default=None)  # the prompt response's `usage`

    async def say(self, text: str) -> None:
        """One agent message: one chunk per word, all with the same fresh messageId."""
        message_id = str(uuid.uuid4())
        for chunk in word_chunks(text):
            await self.peer.update(
                self.session_id,
                AgentMessageChunk(
                    session_update="agent_message_chunk",
                    message_id=message_id,
                    content=TextContentBlock(type="text", text=chunk),
                ),
            )

    async def think(self, text: str) -> None:
        """One agent thought, chunked like a message."""
        message_id = str(uuid.uuid4())
        for chunk in word_chunks(text):
            await self.peer.update(
                self.session_id,
                AgentThoughtChunk(
                    session_update="agent_thought_chunk",
                    message_id=message_id,
                    content=TextContentBlock(type="text", text=chunk),
                ),
            )

    def path(self, raw: str) -> str:
        """A path as typed, made absolute against the session's cwd (ACP wants absolute)."""
        return os.path.join(self.cwd, raw)


Command = Callable[[Turn, str], Awaitable[StopReason]]


async def run_turn(turn: Turn, text: str) -> StopReason:
    """Answer a prompt: a command when its first word is one, else the echo."""
    name, args = split_command(text)
    command = COMMANDS.get(name)
    if command is None:
        await turn.say(f"echo: {text}")
        return "end_turn"
    return await command(turn, args)


async def _think(turn: Turn, args: str) -> StopReason:
    if not args.strip():
        return await _usage(turn, "/think <text>")
    await turn.think(args)
    await turn.say(f"echo: {args}")
    return "end_turn"


def _plan(status: PlanEntryStatus) -> AgentPlanUpdate:
    return AgentPlanUpdate(
        session_update="plan",
        entries=[
            PlanEntry(content=step, priority="medium", status=status)
            for step in PLAN_STEPS
        ],
    )


async def _plan_command(turn: Turn, _args: str) -> StopReason:
    await turn.peer.update(turn.session_id, _plan("pending"))
    await turn.peer.update(turn.session_id, _plan("completed"))
    return "end_turn"


async def _tool(turn: Turn, _args: str) -> StopReason:
    tool_call_id = f"echo-tool-{uuid.uuid4()}"
    path = os.path.join(turn.cwd, "README.md")
    await turn.peer.update(
        turn.session_id,
        ToolCallStart(
            session_update="tool_call",
            tool_call_id=tool_call_id,
            title="Read README.md",
            kind="read",
            status="pending",
            locations=[ToolCallLocation(path=path)],
        ),
    )
    await turn.peer.update(
        turn.session_id,
        ToolCallProgress(
            session_update="tool_call_update",
            tool_call_id=tool_call_id,
            status="in_progress",
        ),
    )
    await turn.peer.update(
        turn.session_id,
        ToolCallProgress(
            session_update="tool_call_update",
            tool_call_id=tool_call_id,
            status="completed",
            content=[
                ContentToolCallContent(
                    type="content",
                    content=TextContentBlock(
                        type="text", text=f"echo pretended to read {path}"
                    ),
                )
            ],
        ),
    )
    return "end_turn"


PERMISSION_OPTIONS = (
    PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
)


async def _permission(turn: Turn, _args: str) -> StopReason:
    tool_call = ToolCallUpdate(
        tool_call_id=f"echo-permission-{uuid.uuid4()}",
        title="Echo asks for permission",
        kind="other",
        status="pending",
    )
    response = await turn.peer.request_permission(
        turn.session_id, tool_call, list(PERMISSION_OPTIONS)
    )
    outcome = response.outcome
    if isinstance(outcome, DeniedOutcome):
        await turn.say("denied")
        return "cancelled"
    await turn.say("approved" if outcome.option_id == "allow_once" else "denied")
    return "end_turn"


async def _read(turn: Turn, args: str) -> StopReason:
    if not args.strip():
        return await _usage(turn, "/read <path>")
    try:
        content = await turn.peer.read_text_file(
            turn.session_id, turn.path(args.strip())
        )
    except RequestError as err:
        await turn.say(str(err))
        return "end_turn"
    first_line = content.splitlines()[0] if content else ""
    await turn.say(first_line or "(empty)")
    return "end_turn"


async def _write(turn: Turn, args: str) -> StopReason:
    raw_path, text = split_command(args)
    if not raw_path:
        return await _usage(turn, "/write <path> <text>")
    try:
        await turn.peer.write_text_file(turn.session_id, turn.path(raw_path), text)
    except RequestError as err:
        await turn.say(str(err))
        return "end_turn"
    await turn.say("written")
    return "end_turn"


async def _slow(turn: Turn, args: str) -> StopReason:
    seconds = _number(args)
    if seconds is None or not 0 <= seconds <= MAX_SLOW_SECONDS:
        return await _usage(turn, f"/slow <seconds> (0 to {MAX_SLOW_SECONDS:g})")
    loop = asyncio.get_running_loop()
    start = loop.time()
    message_id = str(uuid.uuid4())
    for tick in range(math.ceil(round(seconds / SLOW_TICK, 6))):
        await turn.peer.update(
            turn.session_id,
            AgentMessageChunk(
                session_update="agent_message_chunk",
                message_id=message_id,
                content=TextContentBlock(type="text", text="tick "),
            ),
        )
        # Absolute deadlines, so the ticks do not drift with the send time.
        await asyncio.sleep(max(0.0, start + (tick + 1) * SLOW_TICK - loop.time()))
    return "end_turn"


async def _fail(_turn: Turn, _args: str) -> StopReason:
    raise EchoError(INTERNAL_ERROR, "echo: asked to fail")


async def _crash(turn: Turn, _args: str) -> StopReason:
    await turn.say("crashing")
    await turn.peer.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_STATUS)


async def _unknown(turn: Turn, _args: str) -> StopReason:
    await turn.peer.raw_update(
        turn.session_id, {"sessionUpdate": "echo_custom", "value": 1}
    )
    return "end_turn"


async def _flood(turn: Turn, args: str) -> StopReason:
    count = _integer(args)
    if count is None or not 0 <= count <= MAX_FLOOD:
        return await _usage(turn, f"/flood <n> (0 to {MAX_FLOOD})")
    message_id = str(uuid.uuid4())
    for index in range(count):
        await turn.peer.update(
            turn.session_id,
            AgentMessageChunk(
                session_update="agent_message_chunk",
                message_id=message_id,
                content=TextContentBlock(type="text", text=f"{index + 1} "),
            ),
        )
    return "end_turn"


async def _stderr(turn: Turn, args: str) -> StopReason:
    kib = _integer(args)
    if kib is None or not 0 <= kib <= MAX_STDERR_KIB:
        return await _usage(turn, f"/stderr <kib> (0 to {MAX_STDERR_KIB})")
    # A blocking write to a pipe nobody drains must not freeze the event loop.
    await asyncio.to_thread(_write_stderr, kib)
    return "end_turn"


def _write_stderr(kib: int) -> None:
    line = b"echo: stderr filler " + b"." * 43 + b"\n"  # 64 bytes, 16 per KiB
    block = line * 16
    out = sys.stderr.buffer
    for _ in range(kib):
        out.write(block)
    out.flush()


async def _usage_report(turn: Turn, _args: str) -> StopReason:
    await turn.peer.update(turn.session_id, USAGE_REPORT)
    turn.usage = TURN_USAGE
    return "end_turn"


async def _terminal(turn: Turn, args: str) -> StopReason:
    words = args.split()
    if not words:
        return await _usage(turn, "/terminal <command> [args...]")
    if not turn.peer.terminal:
        await turn.say("no terminal")
        return "end_turn"
    try:
        terminal_id = await turn.peer.create_terminal(
            turn.session_id, words[0], words[1:], turn.cwd
        )
    except RequestError as err:
        await turn.say(str(err))
        return "end_turn"
    try:
        status = await turn.peer.wait_for_terminal_exit(turn.session_id, terminal_id)
        output = await turn.peer.terminal_output(turn.session_id, terminal_id)
    except RequestError as err:
        await turn.say(str(err))
        return "end_turn"
    finally:
        # also on cancel: releasing kills a command that still runs
        with contextlib.suppress(RequestError, ConnectionError):
            await turn.peer.release_terminal(turn.session_id, terminal_id)
    lines = output.output.splitlines()
    code = status.exit_code if status.exit_code is not None else status.signal
    await turn.say("\n".join([*lines[:1], f"exit {code}"]))
    return "end_turn"


ELICIT_SCHEMA = ElicitationSchema(
    type="object",
    properties={
        "name": ElicitationStringPropertySchema(type="string", title="Your name")
    },
    required=["name"],
)


async def _elicit(turn: Turn, _args: str) -> StopReason:
    try:
        answer = await turn.peer.create_elicitation(
            turn.session_id, "What is your name?", ELICIT_SCHEMA
        )
    except RequestError as err:
        await turn.say(str(err))
        return "end_turn"
    action = answer.get("action")
    if action == "accept":
        content = answer.get("content")
        name = content.get("name") if isinstance(content, dict) else None
        await turn.say(f"hello {name if isinstance(name, str) else ''}".rstrip())
    else:
        await turn.say("declined" if action == "decline" else "cancelled")
    return "end_turn"


async def _usage(turn: Turn, usage: str) -> StopReason:
    await turn.say(f"usage: {usage}")
    return "end_turn"


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(raw: str) -> int | None:
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() else None


COMMANDS: dict[str, Command] = {
    "/think": _think,
    "/plan": _plan_command,
    "/tool": _tool,
    "/permission": _permission,
    "/read": _read,
    "/write": _write,
    "/slow": _slow,
    "/fail": _fail,
    "/crash": _crash,
    "/unknown": _unknown,
    "/flood": _flood,
    "/stderr": _stderr,
    "/usage": _usage_report,
    "/terminal": _terminal,
    "/elicit": _elicit,
}
