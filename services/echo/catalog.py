"""What the echo agent offers: its identity, modes and the `model` config option."""

from __future__ import annotations

from typing import Any

from acp.schema import (
    AgentCapabilities,
    Implementation,
    PromptCapabilities,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionMode,
    SessionModeState,
)

from shared.echo_offer import ECHO_MODELS, ECHO_MODES

PROTOCOL_VERSION = 1
AGENT_NAME = "echo"
AGENT_TITLE = "Echo"
AGENT_VERSION = "0.1.0"

MODES: dict[str, str] = ECHO_MODES
DEFAULT_MODE = "chat"

MODEL_CONFIG_ID = "model"
MODELS: dict[str, str] = ECHO_MODELS
DEFAULT_MODEL = "echo-small"

# The gateway cannot load an echo session: it re-creates one and keeps its own event log.
RESUME_CAPABILITIES: dict[str, Any] = {"supported": True, "mode": "replay"}


def agent_info() -> Implementation:
    """Name, title and version sent in `initialize`."""
    return Implementation(name=AGENT_NAME, title=AGENT_TITLE, version=AGENT_VERSION)


def agent_capabilities() -> AgentCapabilities:
    """No session/load (resume is by replay), text prompts only."""
    return AgentCapabilities(
        load_session=False,
        prompt_capabilities=PromptCapabilities(
            image=False, audio=False, embedded_context=False
        ),
        field_meta={"resumeCapabilities": dict(RESUME_CAPABILITIES)},
    )


def mode_state(current_mode_id: str) -> SessionModeState:
    """The legacy `modes` object of session/new."""
    return SessionModeState(
        current_mode_id=current_mode_id,
        available_modes=[SessionMode(id=mid, name=name) for mid, name in MODES.items()],
    )


def config_options(current_model: str) -> list[SessionConfigOptionSelect]:
    """The complete config option list: one select, `model`."""
    return [
        SessionConfigOptionSelect(
            id=MODEL_CONFIG_ID,
            name="Model",
            category="model",
            type="select",
            current_value=current_model,
            options=[
                SessionConfigSelectOption(value=value, name=name)
                for value, name in MODELS.items()
            ],
        )
    ]


def offered(names: dict[str, str]) -> str:
    """`a, b` for error messages that list what echo offers."""
    return ", ".join(names)
