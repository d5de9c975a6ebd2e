"""Agent provider presets (api.md §5.6): how to launch each agent and what it can resume."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import Literal

from shared.settings import Settings

ResumeMode = Literal["native", "replay", "both"]

# What the echo agent offers (api.md §10): its catalogue takes them from here.
ECHO_MODES: dict[str, str] = {"chat": "Chat", "plan": "Plan"}
ECHO_MODELS: dict[str, str] = {"echo-small": "Echo small", "echo-large": "Echo large"}


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
            "Built-in offline ACP agent that echoes prompts (api.md §10)",
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
    """The executable to run: the override variable, else PATH; None when not found."""
    if provider.id == "echo":
        return provider.binary
    if provider.id == "custom":
        return None
    if provider.env_override:
        override = getattr(settings, provider.env_override, None)
        if override:
            return shutil.which(override) or None
    return shutil.which(provider.binary)


def resume_capabilities_for(provider_id: str) -> dict[str, object]:
    provider = PROVIDERS.get(provider_id)
    if provider is None:
        return {"supported": True, "mode": "replay"}
    return provider.resume_capabilities()
