"""W3C trace context for prompts: the client's `_meta` passes through, with a `traceparent`.

A client that traces sends `_meta.traceparent`; otherwise one is made here, so every
turn can be followed from the access log through the agent to its stored events.
"""

from __future__ import annotations

import secrets
from typing import Any

VERSION = "00"
SAMPLED = "01"


def new_traceparent() -> str:
    """`00-<32 hex trace id>-<16 hex parent id>-01` (W3C Trace Context, level 1)."""
    return f"{VERSION}-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{SAMPLED}"


def with_traceparent(meta: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The `_meta` to send the agent (the client's, unchanged, plus a traceparent when it
    had none) and the traceparent in force."""
    out = dict(meta or {})
    traceparent = out.get("traceparent")
    if not isinstance(traceparent, str) or not traceparent:
        traceparent = new_traceparent()
        out["traceparent"] = traceparent
    return out, traceparent
