"""SQL of event retention: the logs of sessions closed longer than the retention window.

Only `status = 'closed'` sessions qualify, and only once both their last event and their
last row change are older than the cutoff. The session row stays (the list, its usage and
`last_event_id`, so new events keep numbering after the old ones); its events and the
search documents built from them go. Every delete is bounded by `limit` rows and re-checks
the session in the same statement, so one that was reopened meanwhile keeps the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from shared.db.connect import Connection, Executor

# Arbitrary constant, distinct from the migration lock: one pass at a time per database.
RETENTION_LOCK_ID = 0x524F555452  # "ROUTR"

# The one definition of "expired" at cutoff $2, over sessions aliased `s`.
_EXPIRED = "s.status = 'closed' AND s.last_activity < $2 AND s.updated_at < $2"

# The re-check each delete makes in its own statement: session $1 is still expired.
_STILL_EXPIRED = (
    "EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = $1 AND "  # noqa: S608 - constant fragments
    + _EXPIRED
    + ")"
)

# The next expired sessions after a cursor, each with whether it still holds rows. Each
# test is a scalar subquery ordered by the primary key with LIMIT 1: one index probe per
# session. As EXISTS the planner may pick a scan of the whole log (a semi-join in WHERE; or,
# when one session holds most rows, a sequential scan it expects to match at once, which
# reads the whole table for every session without events).
EXPIRED_WINDOW = (
    "SELECT s.session_id,"  # noqa: S608 - constant fragments, values are $n parameters
    + """
       (SELECT e.event_id FROM session_events e
        WHERE e.session_id = s.session_id ORDER BY e.event_id LIMIT 1) IS NOT NULL
       OR (SELECT d.first_event_id FROM search_documents d
           WHERE d.session_id = s.session_id ORDER BY d.first_event_id LIMIT 1) IS NOT NULL
           AS holds_rows
FROM sessions s
WHERE s.session_id > $1 AND """
    + _EXPIRED
    + """
ORDER BY s.session_id
LIMIT $3
"""
)

DELETE_EVENTS = (
    "DELETE FROM session_events e"  # noqa: S608 - constant fragments, values are $n parameters
    + """
USING (
    SELECT x.event_id FROM session_events x
    WHERE x.session_id = $1
      AND """
    + _STILL_EXPIRED
    + """
    ORDER BY x.event_id
    LIMIT $3
) doomed
WHERE e.session_id = $1 AND e.event_id = doomed.event_id
"""
)

DELETE_SEARCH = (
    "DELETE FROM search_documents d"  # noqa: S608 - constant fragments, values are $n parameters
    + """
USING (
    SELECT x.first_event_id FROM search_documents x
    WHERE x.session_id = $1
      AND """
    + _STILL_EXPIRED
    + """
    ORDER BY x.first_event_id
    LIMIT $3
) doomed
WHERE d.session_id = $1 AND d.first_event_id = doomed.first_event_id
"""
)


async def try_lock(conn: Connection) -> bool:
    """Session-level advisory lock: False when another instance runs a pass."""
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID)
    )


async def unlock(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)


async def expired_window(
    conn: Executor, after: uuid.UUID, cutoff: datetime, limit: int
) -> list[tuple[uuid.UUID, bool]]:
    """Up to `limit` expired sessions after `after` in id order: (id, still holds rows)."""
    rows = await conn.fetch(EXPIRED_WINDOW, after, cutoff, limit)
    return [(r["session_id"], bool(r["holds_rows"])) for r in rows]


def _count(status: str) -> int:
    """Rows of a `DELETE n` command tag."""
    return int(status.rsplit(" ", 1)[-1])


async def delete_events(
    conn: Executor, session_id: uuid.UUID, cutoff: datetime, limit: int
) -> int:
    """At most `limit` of the session's oldest events, if it is still expired."""
    return _count(await conn.execute(DELETE_EVENTS, session_id, cutoff, limit))


async def delete_search(
    conn: Executor, session_id: uuid.UUID, cutoff: datetime, limit: int
) -> int:
    """At most `limit` of the session's search documents, if it is still expired."""
    return _count(await conn.execute(DELETE_SEARCH, session_id, cutoff, limit))


DeleteFn = Callable[[Connection, uuid.UUID, datetime, int], Awaitable[int]]
