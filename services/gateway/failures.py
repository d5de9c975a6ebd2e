"""How agent failures become JSON-RPC errors (api.md §5.1) and acp_error messages."""

from __future__ import annotations

from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    AgentTimeout,
    on_exit_message,
)
from shared.errors import AgentError, ProviderUnavailable


class AgentCallFailed(AgentError):
    """-32000 carrying the agent's own error in data.agentError (api.md §5.1)."""

    def __init__(self, err: AgentRequestFailed, what: str) -> None:
        super().__init__(
            f"Agent error on {what}: {err.message}",
            data={"agentError": err.agent_error()},
        )


# what an agent request can raise besides the caller's own errors
AGENT_FAILURES = (AgentRequestFailed, AgentDied, AgentTimeout)


def agent_failure(err: Exception, what: str) -> AgentError:
    """Map an agents.py exception to the JSON-RPC error the caller gets."""
    if isinstance(err, AgentRequestFailed):
        return AgentCallFailed(err, what)
    if isinstance(err, AgentTimeout):
        return AgentError(str(err))
    return AgentError(f"Agent process is not running ({what})")


def start_error(err: Exception, agent: AgentProcess | None) -> str:
    """The acp_error of a start that failed with `err`, with the agent's last stderr."""
    tail = agent.last_stderr() if agent else ""
    if isinstance(err, AgentRequestFailed):
        msg = f"Agent error: {err.message}"
    elif isinstance(err, AgentDied) and agent and agent.exited.done():
        msg = on_exit_message(agent.exited.result(), "")
    elif isinstance(err, OSError):
        msg = f"Cannot start agent: {err}"
    else:
        msg = str(err) or err.__class__.__name__
    if tail and "last stderr" not in msg:
        msg += f"; last stderr: {tail}"
    return msg


def not_ready(
    message: str, cause: Exception | None
) -> AgentError | ProviderUnavailable:
    """What callers waiting for a failed start get: the agent's error when it gave one."""
    if isinstance(cause, AgentRequestFailed):
        return AgentError(message, data={"agentError": cause.agent_error()})
    if isinstance(cause, ProviderUnavailable):
        return cause
    return AgentError(message)
