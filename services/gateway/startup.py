"""Starting an agent: spawn, initialize, new or load, apply mode/model, ready."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.gateway import confine
from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    AgentSpec,
)
from services.gateway.failures import start_error
from services.gateway.live import LiveSession, current_model
from services.gateway.modes import agent_set_mode, agent_set_model
from shared.db import sessions
from shared.errors import AgentError, ProviderUnavailable
from shared.events import gateway_update
from shared.providers import get_provider, provider_env

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StartRequest:
    """What the agent start needs beyond the row: user choices to apply, resume or not."""

    resume: bool
    user_mode: str | None = None
    user_model: str | None = None


def agent_spec(manager: SessionManager, live: LiveSession) -> AgentSpec:
    provider = get_provider(live.provider)
    if provider is None:
        raise ProviderUnavailable(f"Provider {live.provider} is not available")
    command, args = manager.provider_command(
        provider, live.custom_command, live.custom_args
    )
    settings = manager.settings
    home = settings.agent_home or (settings.agents_home_root / live.session_id)
    return AgentSpec(
        command=command,
        args=args,
        cwd=live.cwd,
        home=home,
        request_timeout=settings.agent_request_timeout,
        max_line=settings.agent_max_line,
        terminal_output_limit=settings.terminal_output_limit,
        max_terminals=settings.max_terminals,
        fence=confine.fence(settings, live.workspace_id, live.cwd),
        user=manager.agent_user,
        owned=confine.owned_dirs(settings, live.workspace_id, home, live.cwd),
        env=provider_env(provider.id, settings),
        session_id=live.session_id,
        provider=provider.id,
    )


def prepare_home(home: Path, provider_id: str, opencode_config: Path | None) -> None:
    """Files an agent needs in its private HOME before it starts.

    opencode reads its providers (model API base URL, `{env:…}` credentials) from
    $HOME/.config/opencode/opencode.json: OPENCODE_CONFIG is copied there at every start,
    so an edited file takes effect with the next agent and every home has it.
    """
    home.mkdir(parents=True, exist_ok=True)
    if provider_id == "opencode" and opencode_config is not None:
        target = home / ".config" / "opencode" / "opencode.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(opencode_config, target)


async def start(manager: SessionManager, live: LiveSession, req: StartRequest) -> None:
    """initialize → new (or load) → apply mode/model → ready; any failure → error."""
    try:
        await start_agent(manager, live, req)
    except Exception as err:  # noqa: BLE001 - every failure becomes acp_status error
        if live.stopping:
            if not live.ready.done():
                live.ready.set_exception(AgentError("Agent stopped while starting"))
            return
        message = start_error(err, live)
        logger.warning("agent start failed for %s: %s", live.session_id, message)
        await manager.fail(live, message, start_error=err)


async def start_agent(
    manager: SessionManager, live: LiveSession, req: StartRequest
) -> None:
    spec = agent_spec(manager, live)
    # the stored list, checked again: nothing the current policy refuses reaches an agent
    mcp_servers = manager.mcp.for_agent(live.mcp_servers)
    await asyncio.to_thread(live.cwd.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(
        prepare_home, spec.home, live.provider, manager.settings.opencode_config
    )
    agent = AgentProcess(spec, live, manager.event_buffer)
    live.agent = agent
    await agent.start()
    init = await agent.initialize()
    caps = init.get("agentCapabilities")
    live.capabilities = caps if isinstance(caps, dict) else {}
    provider = get_provider(live.provider)
    native = (
        req.resume
        and provider is not None
        and provider.resume_mode in ("native", "both")
        and bool(live.capabilities.get("loadSession"))
        and bool(live.routa_agent_id)
    )
    if native:
        assert live.routa_agent_id is not None
        agent.suppress_updates = True  # history is already in our log
        try:
            result = await agent.request(
                "session/load",
                {
                    "sessionId": live.routa_agent_id,
                    "cwd": str(live.cwd),
                    "mcpServers": mcp_servers,
                },
            )
        finally:
            agent.suppress_updates = False
        live.agent_session_id = live.routa_agent_id
        live.resume_mode = "native"
    else:
        result = await agent.request(
            "session/new", {"cwd": str(live.cwd), "mcpServers": mcp_servers}
        )
        if not isinstance(result, dict) or not isinstance(result.get("sessionId"), str):
            raise AgentRequestFailed(-32603, "session/new answered without sessionId")
        live.agent_session_id = result["sessionId"]
        live.resume_mode = "recreated"
    absorb(live, result if isinstance(result, dict) else {})
    extra: dict[str, Any] = {}
    if live.agent_session_id != live.routa_agent_id:
        live.routa_agent_id = live.agent_session_id
        assert live.routa_agent_id is not None
        await sessions.set_agent_id(manager.pool, live.uuid, live.routa_agent_id)
        extra["routaAgentId"] = live.routa_agent_id
    # The user's (or the stored) mode and model win; else take the agent's.
    want_mode = req.user_mode or live.mode_id
    agent_mode = (live.modes or {}).get("currentModeId")
    if want_mode and want_mode != agent_mode:
        await agent_set_mode(manager, live, want_mode)
    elif not want_mode and isinstance(agent_mode, str):
        live.mode_id = agent_mode
        await sessions.set_mode(manager.pool, live.uuid, agent_mode)
        extra["modeId"] = agent_mode
    want_model = req.user_model or live.model
    agent_model = current_model(live.config_options, live.legacy_models)
    if want_model and want_model != agent_model:
        await agent_set_model(manager, live, want_model)
    elif not want_model and agent_model:
        live.model = agent_model
        await sessions.set_model(manager.pool, live.uuid, agent_model)
        extra["model"] = agent_model
    if live.stopping:
        raise AgentDied("stopped while starting")
    position, changes = manager.record_state(
        live, "ready", "idle", gateway_update("acp_status", status="ready"), extra=extra
    )
    # ready here before the row and the log can say so: whoever reads ready there finds
    # the session usable (idle for MAX_SESSIONS); its next events queue behind this one
    live.last_used = time.monotonic()
    if not live.ready.done():
        live.ready.set_result(None)
    await live.writer.flush(position)
    if changes and not live.writer.fenced:
        await manager.announce(live.workspace_id, live.session_id, changes)


def absorb(live: LiveSession, result: dict[str, Any]) -> None:
    modes = result.get("modes")
    if isinstance(modes, dict):
        live.modes = modes
    options = result.get("configOptions")
    if isinstance(options, list):
        live.config_options = [o for o in options if isinstance(o, dict)]
    models = result.get("models")
    if isinstance(models, dict):
        live.legacy_models = models
