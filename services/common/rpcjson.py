"""Parsing a JSON-RPC body so that every request id comes back exactly as it was sent.

orjson reads an integer beyond 64 bits as a float (2^64 would come back as
1.8446744073709552e+19) and refuses a number beyond a double's range outright. Ids are
opaque to us, so a numeric id that is not a plain 64-bit integer keeps its source text
(an `orjson.Fragment`, written back verbatim); every other value is what orjson reads.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_INT_RANGE = range(-(2**63), 2**64)


class _Literal:
    """A JSON number as written in the body."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(text: str) -> Any:
    """What orjson makes of an integer, short of refusing: int in 64 bits, else a float."""
    if len(text) <= 21:
        value = int(text)
        if value in _INT_RANGE:
            return value
    return float(text)  # inf beyond a double, where orjson would give up


def _stdlib(raw: bytes) -> Any:
    """orjson's result for a body it refused only for a number out of a double's range."""
    payload = json.loads(raw, parse_int=_number, parse_constant=_refuse_constant)
    orjson.dumps(
        payload
    )  # whatever orjson would refuse (a lone surrogate) stays refused
    return payload


def _members(payload: Any) -> list[Any]:
    return payload if isinstance(payload, list) else [payload]


def _has_float_id(payload: Any) -> bool:
    return any(
        isinstance(m, dict) and isinstance(m.get("id"), float)
        for m in _members(payload)
    )


def loads(raw: bytes) -> Any:
    """The parsed body; ValueError (orjson.JSONDecodeError included) when it is not JSON."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if "number is infinity" not in str(err):
            raise
        try:
            payload = _stdlib(raw)
        except (ValueError, TypeError, RecursionError):
            raise err from None
    if _has_float_id(payload):
        _keep_id_literals(raw, payload)
    return payload


def _keep_id_literals(raw: bytes, payload: Any) -> None:
    """Replace each float id by the number's text in the body (a second, rarer parse)."""
    try:
        literal = json.loads(
            raw,
            parse_int=_Literal,
            parse_float=_Literal,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError):
        return  # nested beyond the stdlib's recursion limit: the float it is
    for member, source in zip(_members(payload), _members(literal), strict=False):
        if isinstance(member, dict) and isinstance(member.get("id"), float):
            text = source.get("id") if isinstance(source, dict) else None
            if isinstance(text, _Literal):
                member["id"] = orjson.Fragment(text.text.encode())


def is_literal_id(value: Any) -> bool:
    """An id kept as its source text by `loads`."""
    return isinstance(value, orjson.Fragment)
