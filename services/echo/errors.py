"""JSON-RPC errors the echo agent answers with (no `data: null`: optional fields stay absent)."""

from __future__ import annotations

from typing import Any

from acp import RequestError

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AGENT_ERROR = -32000


class EchoError(RequestError):
    """A RequestError whose error object omits `data` when there is none."""

    def to_error_obj(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.data is not None:
            error["data"] = self.data
        return error


def invalid_params(message: str) -> EchoError:
    """-32602 with a message that names the offending field."""
    return EchoError(INVALID_PARAMS, message)
