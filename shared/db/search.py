"""SQL for `search_documents`, the full-text index of user prompts and agent messages.

Documents are built by index passes (`index_session`, the SQL function of migration
0010_search_index_passes), run outside the transactions that append events: by the
gateway's event writer when it has nothing left to store, and by `shared.events.record`.
Ranking is `ts_rank_cd` (divided by 1 + log of the length) over an English `tsvector`; the
query is Postgres's `websearch_to_tsquery` (words ANDed, "phrases", -exclusions, OR).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.db.connect import Executor

# Marks ts_headline puts around matches. Private-use characters, removed from the text
# first, so the caller can escape the snippet as HTML and then turn these into <mark>.
MARK_START = "\ue000"
MARK_STOP = "\ue001"
HEADLINE_OPTIONS = (
    f"StartSel={MARK_START}, StopSel={MARK_STOP}, MaxWords=35, MinWords=15"
)

# $1 workspace, $2 q, $3 rows, $4-$7 the cursor (rank, at, session, first event) or NULLs,
# $8 headline options. Order: rank, then newest, then a fixed tie-break; the snippet is
# made only for the rows of the page.
SEARCH = """
WITH q AS (SELECT websearch_to_tsquery('english', $2) AS query),
page AS (
    SELECT d.session_id, d.first_event_id, d.event_id, d.kind, d.at, d.body, d.rank
    FROM (
        SELECT d.*, ts_rank_cd(d.tsv, q.query, 1) AS rank
        FROM search_documents d, q
        WHERE d.workspace_id = $1 AND d.tsv @@ q.query
    ) d
    WHERE $4::real IS NULL
       OR d.rank < $4
       OR (d.rank = $4 AND (d.at < $5
           OR (d.at = $5 AND (d.session_id > $6
               OR (d.session_id = $6 AND d.first_event_id > $7)))))
    ORDER BY d.rank DESC, d.at DESC, d.session_id, d.first_event_id
    LIMIT $3
)
SELECT p.session_id, p.first_event_id, p.event_id, p.kind, p.at, p.rank, s.name,
       ts_headline('english', translate(p.body, $9, ''), q.query, $8) AS snippet
FROM page p
JOIN sessions s ON s.session_id = p.session_id AND s.workspace_id = $1
CROSS JOIN q
ORDER BY p.rank DESC, p.at DESC, p.session_id, p.first_event_id
"""

# One pass over a session's events after its watermark (under the watermark's row lock)
INDEX_SESSION = "SELECT search_index_session($1)"

CURSOR_KEY = "SELECT key FROM server_keys WHERE name = 'search_cursor'"


@dataclass(slots=True)
class CursorKey:
    """The database's signing key of search cursors (`cursor_key`), read on first use."""

    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the sort key of its last hit."""

    rank: float
    at: datetime
    session_id: uuid.UUID
    first_event_id: int


@dataclass(frozen=True, slots=True)
class Hit:
    session_id: str
    session_name: str | None
    event_id: int
    kind: str
    at: datetime
    snippet: str  # plain text with MARK_START/MARK_STOP around matches
    position: Position


async def search(
    conn: Executor,
    workspace_id: str,
    q: str,
    limit: int,
    after: Position | None = None,
) -> list[Hit]:
    """Up to `limit` hits of `q` in the workspace, best first, after `after`."""
    rows = await conn.fetch(
        SEARCH,
        workspace_id,
        q,
        limit,
        after.rank if after else None,
        after.at if after else None,
        after.session_id if after else None,
        after.first_event_id if after else None,
        HEADLINE_OPTIONS,
        MARK_START + MARK_STOP,
    )
    return [
        Hit(
            session_id=str(r["session_id"]),
            session_name=r["name"],
            event_id=r["event_id"],
            kind=r["kind"],
            at=r["at"],
            snippet=r["snippet"],
            position=Position(r["rank"], r["at"], r["session_id"], r["first_event_id"]),
        )
        for r in rows
    ]


async def cursor_key(conn: Executor) -> bytes:
    """The database's key for signing cursors (made by the migration), shared by instances."""
    key: bytes = await conn.fetchval(CURSOR_KEY)
    return key


async def index_session(conn: Executor, session_id: uuid.UUID) -> bool:
    """Index what the session stored since its last pass; True when a message is left open.

    Safe from any process at any time: passes of one session wait for each other, and each
    event is indexed once. An open message needs the next stored event and a pass to close.
    """
    return bool(await conn.fetchval(INDEX_SESSION, session_id))
