"""How an agent is launched: its command from the provider preset, its AgentSpec."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.gateway import confine
from services.gateway.agents import AgentSpec
from services.gateway.confine import AgentUser
from shared.errors import BadRequest, ProviderUnavailable
from shared.providers import (
    Provider,
    gateway_auth,
    get_provider,
    missing_credentials,
    provider_env,
    resolve_binary,
)
from shared.settings import Settings


def provider_command(
    settings: Settings,
    provider: Provider,
    custom_command: str | None,
    custom_args: list[str],
) -> tuple[str, tuple[str, ...]]:
    """The executable and arguments, or -32002 saying what is missing."""
    if provider.id == "custom":
        if not custom_command:
            raise BadRequest("Invalid customCommand: required for provider custom")
        if not settings.allow_custom_commands:
            raise BadRequest(
                "Invalid customCommand: custom commands are disabled (set ALLOW_CUSTOM_COMMANDS)"
            )
        found = shutil.which(custom_command)
        if found is None:
            raise ProviderUnavailable(
                f"Provider custom is not available: command {custom_command!r} not found"
            )
        return found, tuple(custom_args)
    missing = missing_credentials(provider.id, settings)
    if missing:
        setting = (
            "AGENT_AUTH_CLAUDE=gateway"
            if settings.agent_auth_claude == "gateway" and provider.id == "claude"
            else f"AGENT_ENV_{provider.id.upper()}"
        )
        raise ProviderUnavailable(
            f"Provider {provider.id} is not available: credentials missing "
            f"({setting} names {' or '.join(missing)}, which the gateway's environment "
            "does not set)"
        )
    binary = resolve_binary(provider, settings)
    if binary is None:
        hint = (
            f" (set {provider.env_override.upper()} or put it on PATH)"
            if provider.env_override
            else ""
        )
        raise ProviderUnavailable(
            f"Provider {provider.id} is not available: binary {provider.binary!r} not found{hint}"
        )
    return binary, provider.args


def agent_spec(
    settings: Settings,
    *,
    session_id: str,
    workspace_id: str,
    provider_id: str,
    cwd: Path,
    custom_command: str | None,
    custom_args: list[str],
    user: AgentUser | None,
) -> AgentSpec:
    """Command, cwd, home and limits of one session's agent (from settings and its row)."""
    provider = get_provider(provider_id)
    if provider is None:
        raise ProviderUnavailable(f"Provider {provider_id} is not available")
    command, args = provider_command(settings, provider, custom_command, custom_args)
    home = settings.agent_home or (settings.agents_home_root / session_id)
    return AgentSpec(
        command=command,
        args=args,
        cwd=cwd,
        home=home,
        request_timeout=settings.agent_request_timeout,
        max_line=settings.agent_max_line,
        terminal_output_limit=settings.terminal_output_limit,
        max_terminals=settings.max_terminals,
        fence=confine.fence(settings, workspace_id, cwd),
        user=user,
        owned=confine.owned_dirs(settings, workspace_id, home, cwd),
        env=provider_env(provider.id, settings),
        gateway_auth=gateway_auth(provider.id, settings),
        session_id=session_id,
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
