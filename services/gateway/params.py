"""The JSON-RPC params models the gateway's methods and its session manager share.

`session/new` has one model from the wire to the row: the method validates it and hands a
normalised copy to SessionManager.create, which writes the row from it.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.errors import BadRequest


class Params(BaseModel):
    # One spelling per parameter, camelCase: a snake_case key is unknown, so ignored like
    # any other unknown key. The scope check reads these same camelCase keys from the raw
    # params, so no second spelling can carry an id past it.
    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", strict=True)


class NewParams(Params):
    """`session/new`: as sent, then (SessionManager.create) as checked and trimmed."""

    workspace_id: str
    name: str | None = None
    cwd: str | None = None
    branch: str | None = None
    provider: str | None = None
    mode_id: str | None = Field(
        default=None, validation_alias=AliasChoices("modeId", "mode")
    )
    role: str | None = None
    model: str | None = None
    parent_session_id: str | None = None
    specialist_id: str | None = None
    mcp_servers: list[Any] | None = None  # entries or names: checked by McpPolicy
    idempotency_key: str | None = None
    auto_approve_permissions: bool | None = None
    custom_command: str | None = None
    custom_args: list[str] | None = None

    def provider_id(self, default_provider: str) -> str:
        """The provider asked for; `custom` with a customCommand; else the default."""
        return self.provider or ("custom" if self.custom_command else default_provider)

    def parent(self) -> uuid.UUID | None:
        """parentSessionId as a session id; -32602 naming it when it cannot be one."""
        if self.parent_session_id is None:
            return None
        try:
            return uuid.UUID(self.parent_session_id)
        except ValueError as err:
            raise BadRequest(
                f"Invalid parentSessionId: {self.parent_session_id!r} is not a session id"
            ) from err
