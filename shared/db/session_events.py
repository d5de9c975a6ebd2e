"""SQL for `session_events`, the append-only per-session event log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.db.connect import Connection, Executor
from shared.errors import SessionNotFound

BUMP_COUNTER = """
UPDATE sessions SET last_event_id = last_event_id + $2, last_activity = now()
WHERE session_id = $1 RETURNING last_event_id
"""

RANGE = """
SELECT event_id, payload FROM session_events
WHERE session_id = $1 AND event_id > $2
ORDER BY event_id
LIMIT $3
"""

LATEST_TURN_START = """
SELECT max(event_id) FROM session_events WHERE session_id = $1 AND kind = 'user_message'
"""

OF_KINDS = """
SELECT event_id, payload FROM session_events
WHERE session_id = $1 AND kind = ANY($2::text[])
ORDER BY event_id
"""

COUNT = "SELECT count(*) FROM session_events WHERE session_id = $1"

EXISTS = "SELECT EXISTS (SELECT 1 FROM sessions WHERE session_id = $1)"

# The latest turn boundary: a user_message opens a turn, turn_complete or error ends it.
LAST_TURN_MARK = """
SELECT kind FROM session_events
WHERE session_id = $1 AND kind IN ('user_message', 'turn_complete', 'error')
ORDER BY event_id DESC LIMIT 1
"""


class LeaseLost(Exception):
    """The writer's lease generation is no longer current: another instance took over."""


# One statement (one round trip, its own transaction): bump the counter and insert the
# batch with the ids it reserved. $2 event count, $3 kinds, $4 each payload after its
# eventId (`rest`), $5 the payload head up to the eventId; payload = head || id || rest.
# $6 the writer's lease generation (None: unfenced): a stale one stores nothing.
APPEND_BATCH = """
WITH bumped AS (
    UPDATE sessions SET last_event_id = last_event_id + $2, last_activity = now()
    WHERE session_id = $1 AND ($6::bigint IS NULL OR lease_generation = $6)
    RETURNING last_event_id
), inserted AS (
    INSERT INTO session_events (session_id, event_id, kind, payload)
    SELECT $1, b.last_event_id - $2 + e.n, e.kind,
           $5::text || (b.last_event_id - $2 + e.n) || e.rest
    FROM bumped b, unnest($3::text[], $4::text[]) WITH ORDINALITY AS e(kind, rest, n)
)
SELECT last_event_id FROM bumped
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: int
    payload: bytes  # the event object as JSON, exactly as published and streamed


def build_payload(session_id: str, event_id: int, params: dict[str, Any]) -> bytes:
    """The event object: the agent's params with our sessionId and the eventId."""
    body: dict[str, Any] = {"sessionId": session_id, "eventId": str(event_id)}
    body.update((k, v) for k, v in params.items() if k not in ("sessionId", "eventId"))
    return orjson.dumps(body)


def kind_of(params: dict[str, Any]) -> str:
    update = params.get("update")
    if isinstance(update, dict):
        kind = update.get("sessionUpdate")
        if isinstance(kind, str):
            return kind
    return "unknown"


async def append(
    conn: Connection,
    session_id: uuid.UUID,
    params_list: Sequence[dict[str, Any]],
) -> list[StoredEvent]:
    """Store events with the session's next contiguous ids, in one transaction.

    `params_list` holds `session/update` params (`{"update": {...}, ...}`); the counter on the
    session row serialises writers, so any process may append.
    """
    if not params_list:
        return []
    sid = str(session_id)
    async with conn.transaction():
        last = await conn.fetchval(BUMP_COUNTER, session_id, len(params_list))
        if last is None:
            raise SessionNotFound(sid)
        first = last - len(params_list) + 1
        events = [
            StoredEvent(first + i, build_payload(sid, first + i, params))
            for i, params in enumerate(params_list)
        ]
        await conn.copy_records_to_table(
            "session_events",
            records=[
                (session_id, ev.event_id, kind_of(params), ev.payload.decode())
                for ev, params in zip(events, params_list, strict=True)
            ],
            columns=["session_id", "event_id", "kind", "payload"],
        )
    return events


def _rest(params: dict[str, Any]) -> bytes:
    """The payload after the eventId value: `"` then the params' other fields and `}`."""
    body = orjson.dumps(
        {k: v for k, v in params.items() if k not in ("sessionId", "eventId")}
    )
    return b'"}' if body == b"{}" else b'",' + body[1:]


async def append_batch(
    conn: Executor,
    session_id: uuid.UUID,
    params_list: Sequence[dict[str, Any]],
    *,
    generation: int | None = None,
) -> list[StoredEvent]:
    """`append` in one statement and one round trip; payloads byte-identical to it.

    Each params object is encoded once; the stored text and the returned (published)
    bytes are the same head + eventId + rest. With `generation` (the lease's fencing
    token) nothing is stored unless it is current: LeaseLost.
    """
    if not params_list:
        return []
    sid = str(session_id)
    head = b'{"sessionId":"%s","eventId":"' % sid.encode()
    rests = [_rest(p) for p in params_list]
    count = len(rests)
    last = await conn.fetchval(
        APPEND_BATCH,
        session_id,
        count,
        [kind_of(p) for p in params_list],
        [r.decode() for r in rests],
        head.decode(),
        generation,
    )
    if last is None:
        if generation is not None and await conn.fetchval(EXISTS, session_id):
            raise LeaseLost(sid)
        raise SessionNotFound(sid)
    first = last - count + 1
    return [
        StoredEvent(first + i, b"%s%d%s" % (head, first + i, rest))
        for i, rest in enumerate(rests)
    ]


async def after(
    conn: Executor,
    session_id: uuid.UUID,
    after_id: int,
    limit: int | None = None,
) -> list[StoredEvent]:
    rows = await conn.fetch(RANGE, session_id, after_id, limit)
    return [StoredEvent(r["event_id"], r["payload"].encode()) for r in rows]


async def latest_turn_start(conn: Executor, session_id: uuid.UUID) -> int | None:
    """eventId of the latest `user_message`, or None when the session has had no prompt."""
    value = await conn.fetchval(LATEST_TURN_START, session_id)
    return int(value) if value is not None else None


async def of_kinds(
    conn: Executor, session_id: uuid.UUID, kinds: Sequence[str]
) -> list[StoredEvent]:
    rows = await conn.fetch(OF_KINDS, session_id, list(kinds))
    return [StoredEvent(r["event_id"], r["payload"].encode()) for r in rows]


async def count(conn: Executor, session_id: uuid.UUID) -> int:
    return int(await conn.fetchval(COUNT, session_id))


async def turn_open(conn: Executor, session_id: uuid.UUID) -> bool:
    """Whether the log holds a turn without its end event: what an adopter must end."""
    return bool(await conn.fetchval(LAST_TURN_MARK, session_id) == "user_message")
