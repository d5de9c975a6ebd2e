"""SQL for `session_events`, the append-only per-session event log.

The payload's byte layout is shared.events' (encode, store, record); this module only joins
the parts it is given.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.db.connect import Executor
from shared.errors import SessionNotFound

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
# $6 the batch id, kept on the batch's first event (unique): when an earlier attempt of
# this batch committed (its reply lost), `done` finds it and nothing is stored again.
# $7..$9 a state change (acp_status, status, acp_error) written with the events, so the
# row never shows a state whose event is not in the log yet; $7 NULL leaves the state.
# $10 the writer's lease generation (None: unfenced): a stale one stores nothing. A batch
# already stored (`done`) is returned as stored, whatever the generation is now.
APPEND_BATCH = """
WITH done AS (
    SELECT event_id FROM session_events WHERE batch_id = $6 AND session_id = $1
), bumped AS (
    UPDATE sessions SET last_event_id = last_event_id + $2, last_activity = now(),
        acp_status = coalesce($7::text, acp_status),
        status = coalesce($8::text, status),
        acp_error = CASE WHEN $7::text IS NULL THEN acp_error ELSE $9::text END,
        updated_at = CASE WHEN $7::text IS NULL THEN updated_at ELSE now() END
    WHERE session_id = $1 AND NOT EXISTS (SELECT FROM done)
      AND ($10::bigint IS NULL OR lease_generation = $10)
    RETURNING last_event_id
), inserted AS (
    INSERT INTO session_events (session_id, event_id, kind, payload, batch_id)
    SELECT $1, b.last_event_id - $2 + e.n, e.kind,
           $5::text || (b.last_event_id - $2 + e.n) || e.rest,
           CASE WHEN e.n = 1 THEN $6::uuid END
    FROM bumped b, unnest($3::text[], $4::text[]) WITH ORDINALITY AS e(kind, rest, n)
)
SELECT (SELECT last_event_id FROM bumped) AS last,
       (SELECT event_id FROM done) AS first_done
"""

BATCH_ID_INDEX = "session_events_batch_id"


@dataclass(frozen=True, slots=True)
class State:
    """A session's acp_status, status and acp_error, written together with an event."""

    acp_status: str
    status: str
    acp_error: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: int
    payload: bytes  # the event object as JSON, exactly as published and streamed


async def append_batch(
    conn: Executor,
    session_id: uuid.UUID,
    head: bytes,
    kinds: Sequence[str],
    rests: Sequence[bytes],
    *,
    batch_id: uuid.UUID | None = None,
    state: State | None = None,
    generation: int | None = None,
) -> int:
    """Store events as `head || eventId || rest` in one statement; the first eventId.

    With a `batch_id` the write is idempotent: calling again with the same id and events
    (a retry after a lost reply) stores nothing and answers the first id the first call
    got. A `state` is set on the row in the same statement. With `generation` (the
    lease's fencing token) nothing new is stored, and no state set, unless it is current:
    LeaseLost.
    """
    session_key = str(session_id)
    count = len(rests)
    args = (
        APPEND_BATCH,
        session_id,
        count,
        list(kinds),
        [r.decode() for r in rests],
        head.decode(),
        batch_id,
        state.acp_status if state else None,
        state.status if state else None,
        state.acp_error if state else None,
        generation,
    )
    try:
        row = await conn.fetchrow(*args)
    except asyncpg.UniqueViolationError as err:
        if err.constraint_name != BATCH_ID_INDEX:
            raise
        # an earlier attempt, still running when this one started, committed first:
        # this statement's snapshot missed it, the next one finds it in `done`
        row = await conn.fetchrow(*args)
    assert row is not None  # the final SELECT always yields one row
    if row["first_done"] is not None:
        return int(row["first_done"])
    if row["last"] is not None:
        return int(row["last"]) - count + 1
    if generation is not None and await conn.fetchval(EXISTS, session_id):
        raise LeaseLost(session_key)  # the row is there: our generation is not current
    raise SessionNotFound(session_key)


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
