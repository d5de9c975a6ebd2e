"""Agent provider presets: how to launch each agent and what it can resume."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.echo_offer import ECHO_MODELS, ECHO_MODES
from shared.settings import Settings

ResumeMode = Literal["native", "replay", "both"]

# where scripts/install-agents puts the pinned agents (agents/package-lock.json)
AGENTS_BIN = Path(__file__).resolve().parents[1] / "agents" / "node_modules" / ".bin"

# Claude Code: no calls home beyond the model API (telemetry, update checks, error reports)
CLAUDE_ENV = (
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
)


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    name: str
    description: str
    binary: str  # executable name looked up on PATH
    args: tuple[str, ...]
    resume_supported: bool
    resume_mode: ResumeMode
    env_override: str | None = (
        None  # Settings attribute holding an explicit binary path
    )
    env: tuple[tuple[str, str], ...] = ()  # always set in this provider's agents
    # Modes and models (id → name) the preset is known to offer, checked by session/new
    # before the agent answers; empty: whatever the agent offers.
    modes: dict[str, str] = field(default_factory=dict, hash=False)
    models: dict[str, str] = field(default_factory=dict, hash=False)

    def resume_capabilities(self) -> dict[str, object]:
        return {"supported": self.resume_supported, "mode": self.resume_mode}


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider(
            "echo",
            "Echo",
            "Built-in offline ACP agent that echoes prompts",
            sys.executable,
            ("-m", "services.echo"),
            True,
            "replay",
            modes=ECHO_MODES,
            models=ECHO_MODELS,
        ),
        Provider(
            "opencode",
            "OpenCode",
            "OpenCode in ACP mode (`opencode acp`)",
            "opencode",
            ("acp",),
            True,
            "native",
            "opencode_bin",
        ),
        Provider(
            "claude",
            "Claude Code",
            "Claude Agent SDK adapter (`claude-agent-acp`)",
            "claude-agent-acp",
            (),
            True,
            "native",
            "claude_agent_acp_bin",
            CLAUDE_ENV,
        ),
        Provider(
            "codex",
            "Codex",
            "OpenAI Codex adapter (`codex-acp`)",
            "codex-acp",
            (),
            True,
            "native",
            "codex_acp_bin",
        ),
        Provider(
            "gemini",
            "Gemini CLI",
            "Gemini CLI in ACP mode (`gemini --acp`)",
            "gemini",
            ("--acp",),
            True,
            "native",
            "gemini_bin",
        ),
        Provider(
            "custom",
            "Custom command",
            "Any ACP agent given by customCommand/customArgs (needs ALLOW_CUSTOM_COMMANDS)",
            "",
            (),
            True,
            "replay",
        ),
    )
}


def get_provider(provider_id: str) -> Provider | None:
    return PROVIDERS.get(provider_id)


def resolve_binary(provider: Provider, settings: Settings) -> str | None:
    """The executable to run: the override variable, else the pinned install
    (scripts/install-agents), else PATH; None when not found."""
    if provider.id == "echo":
        return provider.binary
    if provider.id == "custom":
        return None
    if provider.env_override:
        override = getattr(settings, provider.env_override, None)
        if override:
            return shutil.which(override) or None
        pinned = shutil.which(provider.binary, path=str(AGENTS_BIN))
        if pinned:
            return pinned
    return shutil.which(provider.binary)


# The credentials claude-agent-acp takes through ACP `authenticate` (method `gateway`)
# when AGENT_AUTH_CLAUDE=gateway: read from the gateway's environment, never put in the
# agent's, even when AGENT_ENV_CLAUDE names them.
CLAUDE_GATEWAY_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
)
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"


def gateway_auth(
    provider_id: str, settings: Settings, environ: Mapping[str, str] = os.environ
) -> dict[str, Any] | None:
    """`_meta.gateway` of claude's `authenticate(methodId="gateway")`: the model API's
    base URL and the headers carrying the key; None unless AGENT_AUTH_CLAUDE=gateway."""
    if provider_id != "claude" or settings.agent_auth_claude != "gateway":
        return None
    headers: dict[str, str] = {}
    if environ.get("ANTHROPIC_API_KEY"):
        headers["x-api-key"] = environ["ANTHROPIC_API_KEY"]
    elif environ.get("ANTHROPIC_AUTH_TOKEN"):
        headers["Authorization"] = f"Bearer {environ['ANTHROPIC_AUTH_TOKEN']}"
    base_url = environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE_URL
    return {"baseUrl": base_url, "headers": headers}


# Names that carry a credential: an operator who lists one in AGENT_ENV_<PROVIDER> (or
# turns on AGENT_AUTH_CLAUDE=gateway) means the agent to use it.
_CREDENTIAL_NAME = re.compile(r"(?:^|_)(?:API_KEY|KEY|TOKEN|SECRET|PASSWORD)$")


def missing_credentials(
    provider_id: str, settings: Settings, environ: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """The credential variables this provider is configured to use when none is set.

    Without them the agent starts and only fails at its first model call, after its own
    retries (opencode with no network: about 70 s). Alternatives count as one: naming
    ANTHROPIC_API_KEY and ANTHROPIC_AUTH_TOKEN needs either. Empty: nothing missing,
    or nothing configured (the agent may have its own login).
    """
    if settings.agent_auth_claude == "gateway" and provider_id == "claude":
        named: tuple[str, ...] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    else:
        named = tuple(
            n for n in settings.agent_env_for(provider_id) if _CREDENTIAL_NAME.search(n)
        )
    if not named or any(environ.get(n) for n in named):
        return ()
    return named


def provider_env(
    provider_id: str, settings: Settings, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """What this provider's agents get beyond PATH/LANG/HOME: the variables named by
    AGENT_ENV_<PROVIDER> (copied when set here), then the preset's own.

    IS_SANDBOX=yes makes claude-agent-acp pass a flag Claude Code accepts as root only
    with the value `1` (session/new then fails): a true value is always passed as `1`.
    """
    env = {n: environ[n] for n in settings.agent_env_for(provider_id) if n in environ}
    if gateway_auth(provider_id, settings, environ) is not None:
        for name in CLAUDE_GATEWAY_VARIABLES:
            env.pop(name, None)
    sandbox = env.pop("IS_SANDBOX", None)
    if sandbox is not None and sandbox.strip().lower() in {"1", "yes", "true", "on"}:
        env["IS_SANDBOX"] = "1"
    provider = PROVIDERS.get(provider_id)
    if provider is not None:
        env.update(provider.env)
    return env


def resume_capabilities_for(provider_id: str) -> dict[str, object]:
    provider = PROVIDERS.get(provider_id)
    if provider is None:
        return {"supported": True, "mode": "replay"}
    return provider.resume_capabilities()
