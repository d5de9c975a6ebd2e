"""How agent failures become JSON-RPC errors and acp_error messages."""

from __future__ import annotations

import re

from services.gateway.agents import (
    AgentDied,
    AgentProcess,
    AgentRequestFailed,
    AgentTimeout,
    on_exit_message,
)
from shared.errors import PROVIDER_UNAVAILABLE, AgentError, ProviderUnavailable


class AgentCallFailed(AgentError):
    """-32000 carrying the agent's own error in data.agentError."""

    def __init__(self, err: AgentRequestFailed, what: str) -> None:
        super().__init__(
            f"Agent error on {what}: {err.message}",
            data={"agentError": err.agent_error()},
        )


# What agents say when they have no credentials or the model API refused them: ACP's
# -32000 "Authentication required" (claude-agent-acp without a key), "Gemini API key is
# missing…", opencode's "Incorrect API key provided", Claude Code's "Invalid API key · Fix
# external API key". By the message, not the code: agents use -32000 for other failures
# too, and report a refused key as -32603.
_CREDENTIALS = re.compile(
    r"api[ _-]?key|authenticat|unauthori[sz]ed|credential|\b401\b", re.IGNORECASE
)


class CredentialsRefused(AgentError):
    """-32002: the agent has no credentials or its model API refused them.

    Told apart from other agent errors so a user sees at once what to fix, instead of a
    generic agent failure (or, worse, a model time-out).
    """

    http_status = 503
    jsonrpc_code = PROVIDER_UNAVAILABLE

    def __init__(self, err: AgentRequestFailed, provider: str, what: str) -> None:
        AgentError.__init__(
            self,
            f"Provider {provider} is not available: credentials missing or refused "
            f"(the agent answered {what}: {err.message}); set AGENT_ENV_{provider.upper()}",
            data={"agentError": err.agent_error()},
        )


def credentials_refused(err: AgentRequestFailed) -> bool:
    return bool(_CREDENTIALS.search(err.message))


def call_failure(err: AgentRequestFailed, provider: str, what: str) -> AgentError:
    """The error a failed session/new or session/prompt answers: -32002 for credentials."""
    if credentials_refused(err):
        return CredentialsRefused(err, provider, what)
    return AgentCallFailed(err, what)


def start_failure(err: AgentRequestFailed, provider: str, message: str) -> AgentError:
    """What waiters on a failed start get: -32002 for credentials, else -32000."""
    if credentials_refused(err):
        return CredentialsRefused(err, provider, "while starting")
    return AgentError(message, data={"agentError": err.agent_error()})


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
    message: str, cause: Exception | None, provider: str
) -> AgentError | ProviderUnavailable:
    """What callers waiting for a failed start get: the agent's error when it gave one."""
    if isinstance(cause, AgentRequestFailed):
        return start_failure(cause, provider, message)
    if isinstance(cause, ProviderUnavailable):
        return cause
    return AgentError(message)
