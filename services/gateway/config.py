"""Config options: `session/set_config_option`, and the agent's list kept on the session row.

The agent reports its complete option list in the session/new (or load/resume) result,
in `config_option_update` and in the set_config_option result; each report replaces the
stored one, which the read side shows as the context's `configOptions`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING, Any

import asyncpg

from services.gateway.agents import AgentDied, AgentRequestFailed, AgentTimeout
from services.gateway.failures import agent_failure
from services.gateway.live import LiveSession, option_values
from shared.db import sessions
from shared.errors import BadRequest

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

# one writer at a time per session, each writing the list current when it runs: the
# last write is always the latest report, whatever order the tasks were started in
_locks: weakref.WeakKeyDictionary[LiveSession, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def remember(live: LiveSession, options: list[dict[str, Any]] | None = None) -> None:
    """Take the agent's (complete) list and store it on the session row in the background."""
    if options is not None:
        live.config_options = options
    live.manager.spawn(_store(live))


async def _store(live: LiveSession) -> None:
    lock = _locks.setdefault(live, asyncio.Lock())
    async with lock:
        try:
            await sessions.set_config_options(
                live.manager.pool, live.uuid, list(live.config_options)
            )
        except (OSError, asyncpg.PostgresError):
            # a summary for the read side; the next report writes it again
            return


def find_option(live: LiveSession, config_id: str) -> dict[str, Any]:
    for opt in live.config_options:
        if opt.get("id") == config_id:
            return opt
    offered = ", ".join(str(o.get("id")) for o in live.config_options) or "none"
    raise BadRequest(
        f"Invalid configId: {config_id!r} is not offered by the agent ({offered})"
    )


def request_params(
    live: LiveSession, option: dict[str, Any], value: str | bool
) -> dict[str, Any]:
    """The agent's params; -32602 naming value when it does not fit the option."""
    params: dict[str, Any] = {
        "sessionId": live.agent_session_id,
        "configId": str(option.get("id")),
    }
    if option.get("type") == "boolean":
        if not isinstance(value, bool):
            raise BadRequest("Invalid value: the option is boolean (true or false)")
        params["type"] = "boolean"
    elif isinstance(value, bool):
        raise BadRequest("Invalid value: the option takes a string")
    elif option.get("type") == "select":
        values = option_values(option)
        if values and value not in values:
            raise BadRequest(
                f"Invalid value: {value!r} is not offered ({', '.join(values)})"
            )
    params["value"] = value
    return params


async def set_config_option(
    manager: SessionManager,
    sid: str,
    config_id: str,
    value: str | bool,
    allowed: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Pass the option to the agent; persist model/mode when it is that option."""
    live, _ = await manager.ensure_live(sid, allowed)
    option = find_option(live, config_id)
    params = request_params(live, option, value)
    assert live.agent is not None
    try:
        result = await live.agent.request("session/set_config_option", params)
    except (AgentRequestFailed, AgentDied, AgentTimeout) as err:
        raise agent_failure(err, "session/set_config_option") from err
    if isinstance(result, dict) and isinstance(result.get("configOptions"), list):
        live.config_options = [
            o for o in result["configOptions"] if isinstance(o, dict)
        ]
        await _store(live)  # stored before the reply: the next context read shows it
    changes: dict[str, Any] = {}
    category = option.get("category")
    if isinstance(value, str) and (category == "model" or config_id == "model"):
        live.model = value
        await sessions.set_model(manager.pool, live.uuid, value)
        changes["model"] = value
    elif isinstance(value, str) and (category == "mode" or config_id == "mode"):
        live.mode_id = value
        if live.modes is not None:
            live.modes["currentModeId"] = value
        await sessions.set_mode(manager.pool, live.uuid, value)
        changes["modeId"] = value
    await live.writer.flush()
    live.last_used = time.monotonic()
    if changes:
        await manager.announce(live.workspace_id, sid, changes)
    return {"configOptions": live.config_options}
