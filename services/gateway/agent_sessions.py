"""The agent's own session lifecycle (ACP v1): resume, close and delete when it offers them.

`session/resume` (advertised as `sessionCapabilities.resume`) restores the agent's session
without replaying history, so it is preferred over `session/load` (resumeMode
`resumed`, then `native`, then `recreated`). `session/close` and `session/delete` are
courtesies on the way out: best effort with a short timeout, never blocking a stop.

Functions of the agent process and what it advertised; the session actor (live.py) calls
them.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    AgentTimeout,
)
from shared.errors import ProviderUnavailable

logger = logging.getLogger(__name__)

FAREWELL_TIMEOUT = (
    2.0  # seconds for session/close or session/delete before the stop goes on
)
CLOSE_REASONS = frozenset({"idle", "capacity", "disconnected"})


def session_capabilities(capabilities: dict[str, Any]) -> dict[str, Any]:
    caps = capabilities.get("sessionCapabilities")
    return caps if isinstance(caps, dict) else {}


def offers(capabilities: dict[str, Any], name: str) -> bool:
    """Whether the agent advertised `sessionCapabilities.<name>` (an object, or true)."""
    value = session_capabilities(capabilities).get(name)
    return value is not None and value is not False


async def authenticate(agent: AgentProcess, init: dict[str, Any]) -> None:
    """Hand the model API credentials over through ACP (AGENT_AUTH_CLAUDE=gateway).

    claude-agent-acp lists an auth method `gateway` when initialize advertised
    `auth._meta.gateway`; `authenticate` with the base URL and the key's headers then
    spares the agent's environment the key. An agent that does not offer it cannot be
    given credentials this way: -32002 saying so.
    """
    auth = agent.spec.gateway_auth
    if auth is None:
        return
    methods = init.get("authMethods")
    ids = (
        [m.get("id") for m in methods if isinstance(m, dict)]
        if isinstance(methods, list)
        else []
    )
    if "gateway" not in ids:
        raise ProviderUnavailable(
            f"Provider {agent.spec.provider} is not available: the agent offers no "
            f"gateway authentication (auth methods: {ids or 'none'}); "
            "set AGENT_AUTH_CLAUDE=env and AGENT_ENV_CLAUDE"
        )
    await agent.request(
        "authenticate", {"methodId": "gateway", "_meta": {"gateway": auth}}
    )


async def try_resume(
    agent: AgentProcess,
    capabilities: dict[str, Any],
    routa_agent_id: str | None,
    cwd: Path,
    mcp_servers: list[Any],
) -> dict[str, Any] | None:
    """The agent's session/resume result; None when not offered or the agent refused it."""
    if not routa_agent_id or not offers(capabilities, "resume"):
        return None
    try:
        result = await agent.request(
            "session/resume",
            {"sessionId": routa_agent_id, "cwd": str(cwd), "mcpServers": mcp_servers},
        )
    except AgentRequestFailed as err:
        # the agent no longer knows it (restarted without state): load or recreate
        logger.info(
            "session/resume refused for %s: %s", agent.spec.session_id, err.message
        )
        return None
    return result if isinstance(result, dict) else {}


async def farewell(
    agent: AgentProcess | None,
    capabilities: dict[str, Any],
    routa_agent_id: str | None,
    reason: str,
) -> None:
    """session/delete on delete, session/close on disconnect or idle stop, when offered."""
    if agent is None or not routa_agent_id or agent.exited.done():
        return
    if reason == "deleted" and offers(capabilities, "delete"):
        method = "session/delete"
    elif reason in CLOSE_REASONS and offers(capabilities, "close"):
        method = "session/close"
    else:
        return
    with contextlib.suppress(AgentRequestFailed, AgentDied, AgentTimeout):
        await agent.request(
            method, {"sessionId": routa_agent_id}, timeout=FAREWELL_TIMEOUT
        )
