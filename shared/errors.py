"""Domain errors that carry both their HTTP status and their JSON-RPC code.

Handlers raise these; one REST middleware and one JSON-RPC dispatcher translate them.
"""

from __future__ import annotations

from typing import Any

# JSON-RPC codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AGENT_ERROR = -32000
PROVIDER_UNAVAILABLE = -32002
SESSION_NOT_FOUND = -32004
SESSION_UNSERVABLE = -32010


class DomainError(Exception):
    """Base: a message safe to show the client, a status and a code."""

    http_status = 500
    jsonrpc_code = INTERNAL_ERROR

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class BadRequest(DomainError):
    http_status = 400
    jsonrpc_code = INVALID_PARAMS


class Forbidden(DomainError):
    http_status = 403
    jsonrpc_code = INVALID_REQUEST


class NotFound(DomainError):
    http_status = 404
    jsonrpc_code = INVALID_PARAMS


class SessionNotFound(NotFound):
    jsonrpc_code = SESSION_NOT_FOUND

    def __init__(
        self, session_id: str, *, rest_message: str = "Session not found"
    ) -> None:
        super().__init__(f"Session not found: {session_id}")
        self.rest_message = rest_message


class UnknownWorkspace(NotFound):
    jsonrpc_code = INVALID_PARAMS

    def __init__(self, workspace_id: str) -> None:
        super().__init__(f"Unknown workspace: {workspace_id}")


class Conflict(DomainError):
    http_status = 409
    jsonrpc_code = AGENT_ERROR


class PayloadTooLarge(DomainError):
    http_status = 413
    jsonrpc_code = INVALID_REQUEST


class UnsupportedMediaType(DomainError):
    http_status = 415
    jsonrpc_code = INVALID_REQUEST


class AgentError(DomainError):
    """The agent or the runtime around it failed (-32000)."""

    http_status = 502
    jsonrpc_code = AGENT_ERROR


class ProviderUnavailable(DomainError):
    http_status = 503
    jsonrpc_code = PROVIDER_UNAVAILABLE


class SessionUnservable(DomainError):
    http_status = 503
    jsonrpc_code = SESSION_UNSERVABLE


class DependencyDown(DomainError):
    """Postgres or Redis is unreachable; the message names which."""

    http_status = 503
    jsonrpc_code = INTERNAL_ERROR
