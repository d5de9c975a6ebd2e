"""The gateway's side of the hub (services/common/hub.py): session events as SSE frames.

Each published event (its bytes exactly as stored) is framed once, with its eventId, and
the same bytes go to every stream of the session; the layout and the frame are
shared/events.py's. A `session:deleted` on the workspace lifecycle pattern ends that
session's streams. Pub/sub is at-most-once: the hub tells streams to catch up from the
Postgres log (`Marker.RESYNC`) after every (re)subscription and while Redis is
unreachable; the consumer (sse.py) drops eventIds it already delivered and backfills
gaps, so an eventId is never delivered twice or out of order.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from services.common.hub import Hub
from shared.events import event_id_of, sse_frame


def encode_event(payload: bytes) -> tuple[int, bytes] | None:
    """The hub's encoder for a session's events channel: (eventId, its SSE frame)."""
    event_id = event_id_of(payload)
    if event_id is None:
        return None
    return (event_id, sse_frame(event_id, payload))


def on_lifecycle(hub: Hub) -> Callable[[str, bytes], None]:
    """The lifecycle pattern's handler: a deleted session's streams end on every gateway."""

    def handle(_channel: str, data: bytes) -> None:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict) or body.get("type") != "session:deleted":
            return
        session_id = body.get("sessionId")
        if isinstance(session_id, str):
            hub.close_topic(session_id, "deleted")

    return handle
