"""Prompt turns: start one, run it on the agent, end it exactly once, cancel it (§9.25)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from services.gateway.agents import AgentDied, AgentRequestFailed
from services.gateway.failures import call_failure
from services.gateway.live import LiveSession, Turn, consume, settle_turn
from shared.errors import AgentError, DependencyDown, SessionUnservable
from shared.events import gateway_update

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

logger = logging.getLogger(__name__)

# how long session/prompt waits to store its user_message before answering (Postgres down)
USER_MESSAGE_STORE_WAIT = 5.0


async def prompt(
    manager: SessionManager,
    sid: str,
    blocks: list[dict[str, Any]],
    text: str,
    allowed: frozenset[str] | None = None,
) -> dict[str, Any]:
    live, _ = await manager.ensure_live(sid, allowed)
    if live.turn is not None:
        raise AgentError("A prompt is already running for this session")
    if manager.draining:
        raise SessionUnservable("Gateway draining")
    loop = asyncio.get_running_loop()
    turn = Turn(future=loop.create_future())
    turn.future.add_done_callback(consume)
    live.turn = turn
    live.last_used = time.monotonic()
    try:
        # the user's message is in the log before the agent sees it, with status active
        stored, changes = manager.record_state(
            live,
            live.acp_status,
            "active",
            gateway_update("user_message", content={"type": "text", "text": text}),
        )
        try:
            async with asyncio.timeout(USER_MESSAGE_STORE_WAIT):
                await live.writer.flush(stored)
        except TimeoutError as err:
            # Postgres is down: answer now instead of hanging (the writer retries)
            raise DependencyDown(
                "Postgres unavailable: the prompt could not be stored"
            ) from err
        if live.writer.fenced:
            # not stored: another instance owns the session now; the prompt can go there
            raise SessionUnservable("Session taken over by another gateway instance")
        if changes:
            await manager.announce(live.workspace_id, live.session_id, changes)
    except BaseException as err:
        if live.turn is turn:
            live.turn = None
        # the user_message is (or will be) stored: its turn ends there too (§9.25)
        reason = getattr(err, "message", None) or err.__class__.__name__
        manager.record_state(
            live,
            live.acp_status,
            "idle",
            gateway_update("error", message=f"The prompt was not started: {reason}"),
        )
        raise
    turn.task = manager.spawn_task(run_turn(manager, live, turn, blocks))
    try:
        async with asyncio.timeout(manager.settings.prompt_timeout):
            return await asyncio.shield(turn.future)
    except TimeoutError:
        return {"sessionId": sid, "pending": True}


async def run_turn(
    manager: SessionManager, live: LiveSession, turn: Turn, blocks: list[dict[str, Any]]
) -> None:
    agent = live.agent
    assert agent is not None
    try:
        result = await agent.request(
            "session/prompt",
            {"sessionId": live.agent_session_id, "prompt": blocks},
            timeout=None,
        )
    except AgentDied:
        # The exit handler knows the exit code and ends the turn; make sure it runs.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(agent.exited)
        if not turn.done and not live.stopping:
            await manager.fail(live, "Agent closed its connection")
        return
    except AgentRequestFailed as err:
        if turn.cancel_requested:
            await end_turn(manager, live, turn, result={"stopReason": "cancelled"})
        else:
            await end_turn(
                manager,
                live,
                turn,
                error=f"Agent error: {err.message}",
                exc=call_failure(err, live.provider, "session/prompt"),
            )
        return
    reply: dict[str, Any] = {
        "stopReason": (
            result.get("stopReason", "end_turn")
            if isinstance(result, dict)
            else "end_turn"
        )
    }
    if isinstance(result, dict) and isinstance(result.get("usage"), dict):
        reply["usage"] = result["usage"]
    await end_turn(manager, live, turn, result=reply)


async def end_turn(
    manager: SessionManager,
    live: LiveSession,
    turn: Turn | None = None,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    exc: AgentError | None = None,
    settle: bool = True,
) -> Turn | None:
    """Exactly one turn_complete or error per turn (§9.25), stored before the reply.

    With settle=False the caller answers the prompt later (`settle_turn`), after it has
    stored what must precede the reply (acp_status error on a crash).
    """
    turn = turn or live.turn
    if turn is None or turn.done:
        return None
    turn.done = True
    if turn.watchdog is not None and turn.watchdog is not asyncio.current_task():
        turn.watchdog.cancel()
    if error is not None:
        event = gateway_update("error", message=error)
    else:
        assert result is not None
        event = gateway_update("turn_complete", **result)
    changes: dict[str, Any] = {}
    if live.stopping:
        live.writer.append(event)  # the caller writes the final state after it
    else:
        # the turn's end and status idle: one write
        _, changes = manager.record_state(live, live.acp_status, "idle", event)
    live.cancel_all_permissions()
    await live.writer.flush()
    if live.writer.fenced:
        # not stored: the instance that took the session over ended this turn instead
        result, error, exc = (
            None,
            "Session taken over by another gateway instance",
            None,
        )
        changes = {}  # nor is its state ours to announce
    if live.turn is turn:
        live.turn = None
    if live.approve_scope == "turn":
        live.approve_scope = None
    live.last_used = time.monotonic()
    if changes:
        await manager.announce(live.workspace_id, live.session_id, changes)
    turn.outcome = result if error is None else (exc or AgentError(error))
    if settle:
        settle_turn(turn)
    return turn


async def cancel(
    manager: SessionManager, sid: str, allowed: frozenset[str] | None = None
) -> None:
    live = manager.live.get(sid)
    if live is None:
        await manager.get_session_or_404(sid, allowed)
        return
    manager.check_allowed(live.workspace_id, sid, allowed)
    turn = live.turn
    if turn is None or turn.done:
        return
    turn.cancel_requested = True
    live.cancel_all_permissions()
    if live.agent is not None and live.agent_session_id:
        await live.agent.notify("session/cancel", {"sessionId": live.agent_session_id})
    if turn.watchdog is None:
        turn.watchdog = manager.spawn_task(watchdog(manager, live, turn))


async def watchdog(manager: SessionManager, live: LiveSession, turn: Turn) -> None:
    await asyncio.sleep(manager.settings.cancel_watchdog)
    if not turn.done:
        logger.info("cancel watchdog ended the turn of %s", live.session_id)
        await end_turn(manager, live, turn, result={"stopReason": "cancelled"})
