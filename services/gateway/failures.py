"""How agent failures become JSON-RPC errors (api.md §5.1) and acp_error messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.agents import (
    AgentDied,
    AgentRequestFailed,
    AgentTimeout,
    on_exit_message,
)
from shared.errors import AgentError

if TYPE_CHECKING:
    from services.gateway.live import LiveSession


class AgentCallFailed(AgentError):
    """-32000 carrying the agent's own error in data.agentError (api.md §5.1)."""

    def __init__(self, err: AgentRequestFailed, what: str) -> None:
        super().__init__(
            f"Agent error on {what}: {err.message}",
            data={"agentError": err.agent_error()},
        )


def agent_failure(err: Exception, what: str) -> AgentError:
    """Map an agents.py exception to the JSON-RPC error the caller gets."""
    if isinstance(err, AgentRequestFailed):
        return AgentCallFailed(err, what)
    if isinstance(err, AgentTimeout):
        return AgentError(str(err))
    return AgentError(f"Agent process is not running ({what})")


def start_error(err: Exception, live: LiveSession) -> str:
    tail = live.agent.last_stderr() if live.agent else ""
    if isinstance(err, AgentRequestFailed):
        msg = f"Agent error: {err.message}"
    elif isinstance(err, AgentDied) and live.agent and live.agent.exited.done():
        msg = on_exit_message(live.agent.exited.result(), "")
    elif isinstance(err, OSError):
        msg = f"Cannot start agent: {err}"
    else:
        msg = str(err) or err.__class__.__name__
    if tail and "last stderr" not in msg:
        msg += f"; last stderr: {tail}"
    return msg
