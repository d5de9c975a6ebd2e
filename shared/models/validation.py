"""Turning pydantic validation failures into 400s that name the wire field (never 422)."""

from __future__ import annotations

from collections.abc import Mapping
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


def _find_nul(value: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """Postgres text cannot hold U+0000; find it before it becomes a 500."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*loc, key)
        found = _find_nul(item, (*loc, key))
        if found is not None:
            return found
    return None


def validate_body(model: type[M], data: Any) -> M:
    """Validate a parsed JSON body; the first error becomes `Invalid <field>: <reason>`."""
    if not isinstance(data, dict):
        raise BadRequest("Body must be a JSON object")
    nul = _find_nul(data, ())
    if nul is not None:
        raise BadRequest(f"Invalid {field_name(nul)}: NUL characters are not allowed")
    try:
        # camelCase only: a snake_case key is unknown (ignored), one spelling per field
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as err:
        first = err.errors()[0]
        raise BadRequest(
            f"Invalid {field_name(tuple(first['loc']))}: {first['msg']}"
        ) from err


def clean_title(value: str, field: str = "title") -> str:
    """Trimmed, 1-200 Unicode code points."""
    title = value.strip()
    if not title or len(title) > 200:
        raise BadRequest(f"Invalid {field}: must be 1-200 characters after trimming")
    return title


def query_value(query: Mapping[str, str], name: str) -> str | None:
    """A query parameter; NUL (which Postgres text cannot hold) is a 400 naming it."""
    value = query.get(name)
    if value is not None and "\x00" in value:
        raise BadRequest(f"Invalid {name}: NUL characters are not allowed")
    return value
