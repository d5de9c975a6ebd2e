"""Bounds on ids and numbers that clients send, so that past them is a 400 / -32602 naming
the field instead of a Postgres error (an index row too big, a bigint out of range) or
Python's int-string limit answered as a 500.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from shared.errors import BadRequest

# Every id a client chooses (note, task, codebase, workspace, idempotency key, ...) is at most
# this many Unicode code points: well under Postgres' btree row limit (about 2,700 bytes)
# even at 4 bytes a character.
MAX_ID_LENGTH = 200
# eventId, `after` and Last-Event-ID: a Postgres bigint
MAX_EVENT_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 64


def shown(value: str) -> str:
    """A client's value as quoted in an error message: cut to 64 characters."""
    if len(value) <= _SHOWN:
        return value
    return f"{value[:_SHOWN]}… ({len(value)} characters)"


def too_long(field: str) -> BadRequest:
    return BadRequest(f"Invalid {field}: longer than {MAX_ID_LENGTH} characters")


def check_id(value: str | None, field: str) -> str | None:
    """`value` unchanged, or a 400 naming `field` when it is longer than MAX_ID_LENGTH."""
    if value is not None and len(value) > MAX_ID_LENGTH:
        raise too_long(field)
    return value


def parse_uint(value: str, field: str, maximum: int = MAX_EVENT_ID) -> int:
    """ASCII digits only (`^[0-9]+$`) and at most `maximum`, else `Invalid <field>: <value>`.

    The length is checked before `int()`, which refuses strings over 4,300 digits.
    """
    digits = value.lstrip("0") or "0"
    if (
        not _DIGITS.fullmatch(value)
        or len(digits) > len(str(maximum))
        or int(digits) > maximum
    ):
        raise BadRequest(f"Invalid {field}: {shown(value)}")
    return int(digits)


# UUIDs: anything else is simply unknown (-32004) or not a session id, whatever its length
_SESSION_IDS = frozenset({"session_id", "parent_session_id"})


def check_params(parsed: BaseModel, prefix: str = "") -> None:
    """-32602 naming the field for a NUL (Postgres text and jsonb cannot hold it) and for an
    id over MAX_ID_LENGTH. The prompt is stored as JSON text, where a NUL is only an escape.
    """
    for name in sorted(parsed.model_fields_set - _SESSION_IDS - {"prompt"}):
        value = getattr(parsed, name)
        label = prefix + to_camel(name)
        if isinstance(value, BaseModel):
            check_params(value, f"{label}.")
            continue
        is_id = name.endswith(("_id", "_key"))
        if is_id and isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            raise BadRequest(
                f"Invalid params: {label}: longer than {MAX_ID_LENGTH} characters"
            )
        where = _nul_at(value, label)
        if where is not None:
            raise BadRequest(f"Invalid params: {where}: NUL characters are not allowed")


def _nul_at(value: Any, label: str) -> str | None:
    if isinstance(value, str):
        return label if "\x00" in value else None
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        where = f"{label}.{key}"  # as pydantic's loc in parse(): mcpServers.0.command
        if isinstance(key, str) and "\x00" in key:
            return where
        found = _nul_at(item, where)
        if found is not None:
            return found
    return None
