"""Turning pydantic validation failures into 400s that name the wire field (api.md §2: never 422)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import BadRequest

M = TypeVar("M", bound=BaseModel)


def field_name(loc: tuple[int | str, ...]) -> str:
    """`('codebases', 0, 'repoPath')` -> `codebases[0].repoPath`."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name or "body"


def validate_body(model: type[M], data: Any) -> M:
    """Validate a parsed JSON body; the first error becomes `Invalid <field>: <reason>`."""
    if not isinstance(data, dict):
        raise BadRequest("Body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise BadRequest(
            f"Invalid {field_name(tuple(first['loc']))}: {first['msg']}"
        ) from err


def clean_title(value: str, field: str = "title") -> str:
    """Trimmed, 1-200 Unicode code points (api.md §9.9, §9.20)."""
    title = value.strip()
    if not title or len(title) > 200:
        raise BadRequest(f"Invalid {field}: must be 1-200 characters after trimming")
    return title
