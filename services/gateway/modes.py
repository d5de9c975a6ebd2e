"""Mode and model: switching them on the agent, and what agent updates change (§3.2)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from services.gateway import usage
from services.gateway.agents import AgentDied, AgentRequestFailed, AgentTimeout
from services.gateway.config import remember
from services.gateway.failures import agent_failure
from services.gateway.live import LiveSession, current_model
from shared.db import sessions
from shared.errors import AgentError, BadRequest

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager


NAME_MAX = 200


async def agent_set_mode(
    manager: SessionManager, live: LiveSession, mode_id: str
) -> bool:
    """Ask the agent; True when the agent sent current_mode_update itself."""
    assert live.agent is not None
    known = live.mode_ids()
    if known is not None and mode_id not in known:
        raise BadRequest(
            f"Invalid modeId: {mode_id!r} is not offered ({', '.join(known)})"
        )
    seen = live.mode_updates
    option = live.mode_option()
    if option is not None:
        result = await live.agent.request(
            "session/set_config_option",
            {
                "sessionId": live.agent_session_id,
                "configId": str(option.get("id")),
                "value": mode_id,
            },
        )
        live.absorb_config_options(result)
        remember(live)
    else:
        await live.agent.request(
            "session/set_mode",
            {"sessionId": live.agent_session_id, "modeId": mode_id},
        )
    live.mode_id = mode_id
    if live.modes is not None:
        live.modes["currentModeId"] = mode_id
    await sessions.set_mode(manager.pool, live.uuid, mode_id)
    return live.mode_updates != seen


async def agent_set_model(
    manager: SessionManager, live: LiveSession, model: str
) -> None:
    assert live.agent is not None
    choice = live.model_choice()
    if choice is None:
        raise AgentError("The agent cannot switch models")
    how, config_id, values = choice
    if values and model not in values:
        raise BadRequest(
            f"Invalid model: {model!r} is not offered ({', '.join(values)})"
        )
    if how == "config":
        result = await live.agent.request(
            "session/set_config_option",
            {
                "sessionId": live.agent_session_id,
                "configId": config_id,
                "value": model,
            },
        )
        live.absorb_config_options(result)
        remember(live)
    else:
        await live.agent.request(
            "session/set_model",
            {"sessionId": live.agent_session_id, "modelId": model},
        )
        if live.legacy_models is not None:
            live.legacy_models["currentModelId"] = model
    live.model = model
    await sessions.set_model(manager.pool, live.uuid, model)


async def set_mode(
    manager: SessionManager,
    sid: str,
    mode_id: str,
    allowed: frozenset[str] | None = None,
) -> None:
    live, _ = await manager.ensure_live(sid, allowed)
    try:
        agent_sent = await agent_set_mode(manager, live, mode_id)
    except (AgentRequestFailed, AgentDied, AgentTimeout) as err:
        raise agent_failure(err, "session/set_mode") from err
    if not agent_sent:
        live.emit("current_mode_update", currentModeId=mode_id)
    await live.writer.flush()
    live.last_used = time.monotonic()
    await manager.announce(live.workspace_id, sid, {"modeId": mode_id})


async def set_model(
    manager: SessionManager, sid: str, model: str, allowed: frozenset[str] | None = None
) -> None:
    live, _ = await manager.ensure_live(sid, allowed)
    try:
        await agent_set_model(manager, live, model)
    except (AgentRequestFailed, AgentDied, AgentTimeout) as err:
        raise agent_failure(err, "session/set_model") from err
    live.last_used = time.monotonic()
    await manager.announce(live.workspace_id, sid, {"model": model})


def interpret_update(
    manager: SessionManager, live: LiveSession, update: dict[str, Any]
) -> None:
    """Side effects of agent updates: persisted mode/model, renames (§3.2)."""
    kind = update.get("sessionUpdate")
    if kind == "current_mode_update":
        mode = update.get("currentModeId") or update.get("modeId")
        live.mode_updates += 1
        if isinstance(mode, str) and mode != live.mode_id:
            live.mode_id = mode
            manager.spawn(persist(manager, live, "modeId", mode))
    elif kind == "config_option_update":
        options = update.get("configOptions")
        if isinstance(options, list):
            remember(live, [o for o in options if isinstance(o, dict)])
            model = current_model(live.config_options, None)
            if model and model != live.model:
                live.model = model
                manager.spawn(persist(manager, live, "model", model))
    elif kind == "usage_update":
        usage.on_usage_update(manager, live, update)
    elif kind == "session_info_update":
        title = update.get("title")
        if isinstance(title, str) and title.strip():
            name = title.strip()[:NAME_MAX]
            live.emit("session_renamed", name=name)
            manager.spawn(persist(manager, live, "name", name))


async def persist(
    manager: SessionManager, live: LiveSession, wire_field: str, value: str
) -> None:
    if wire_field == "modeId":
        await sessions.set_mode(manager.pool, live.uuid, value)
    elif wire_field == "model":
        await sessions.set_model(manager.pool, live.uuid, value)
    else:
        await sessions.rename(manager.pool, live.uuid, value)
    await manager.announce(live.workspace_id, live.session_id, {wire_field: value})
