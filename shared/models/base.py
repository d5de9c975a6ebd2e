"""Base for wire models: snake_case in Python, camelCase on the wire, absent instead of null."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=False,
    )

    def wire(self) -> dict[str, Any]:
        """The dict sent to clients: camelCase keys, optional fields without a value left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def wire_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
