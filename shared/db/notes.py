"""SQL for the `notes` table; a note's key is (workspace_id, id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.db.connect import Executor
from shared.jsonutil import iso
from shared.models.note import Note, NoteMetadata

_COLUMNS = """
n.workspace_id, n.id, n.title, n.content, n.session_id, n.type, n.metadata, n.source,
n.created_at, n.updated_at
"""

GET = "SELECT" + _COLUMNS + "FROM notes n WHERE n.workspace_id = $1 AND n.id = $2"

LIST = (
    "SELECT"
    + _COLUMNS
    + """
FROM notes n
WHERE n.workspace_id = $1
  AND ($2::text IS NULL OR n.session_id = $2)
  AND ($3::text IS NULL OR n.type = $3)
ORDER BY n.updated_at DESC, n.id
"""
)

# For groupBy=session: each note with its session's name (sessions ids are uuids; a note's
# session_id is any string, so compare as text and let unknown ids simply match nothing).
# Only a session of the note's own workspace lends its name: another workspace's stays hidden.
LIST_WITH_SESSION_NAME = (
    "SELECT"
    + _COLUMNS
    + """, s.name AS session_name
FROM notes n
LEFT JOIN sessions s ON n.session_id IS NOT NULL AND s.session_id::text = n.session_id
                    AND s.workspace_id = n.workspace_id
WHERE n.workspace_id = $1
  AND ($2::text IS NULL OR n.session_id = $2)
  AND ($3::text IS NULL OR n.type = $3)
ORDER BY n.updated_at DESC, n.id
"""
)

# One statement creates or updates: on update only the fields sent ($n not NULL) change.
# xmax = 0 only for a freshly inserted row, which tells created from updated.
UPSERT = (
    """
INSERT INTO notes AS n (workspace_id, id, title, content, session_id, type, metadata, source)
VALUES ($1, $2, COALESCE($3, 'Untitled'), COALESCE($4, ''), $5, COALESCE($6, 'general'),
        COALESCE($7::jsonb, '{}'::jsonb), COALESCE($8, 'user'))
ON CONFLICT (workspace_id, id) DO UPDATE SET
    title = COALESCE($3, n.title),
    content = COALESCE($4, n.content),
    session_id = COALESCE($5, n.session_id),
    type = COALESCE($6, n.type),
    metadata = COALESCE($7::jsonb, n.metadata),
    source = COALESCE($8, n.source),
    updated_at = now()
RETURNING"""
    + _COLUMNS
    + ", (xmax = 0) AS inserted"
)

DELETE = "DELETE FROM notes WHERE workspace_id = $1 AND id = $2 RETURNING id"


def row_to_note(row: asyncpg.Record) -> Note:
    meta: dict[str, Any] = dict(row["metadata"] or {})
    meta["type"] = row["type"]
    return Note(
        id=row["id"],
        title=row["title"],
        content=row["content"],
        workspace_id=row["workspace_id"],
        session_id=row["session_id"],
        metadata=NoteMetadata.model_validate(meta),
        source=row["source"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
    )


@dataclass(slots=True)
class NoteValues:
    """What a POST sets; None means "not sent" (create: the default, update: unchanged)."""

    title: str | None = None
    content: str | None = None
    session_id: str | None = None
    type: str | None = None
    metadata: dict[str, Any] | None = None  # wire keys, without `type`
    source: str | None = None


async def get(conn: Executor, workspace_id: str, note_id: str) -> Note | None:
    row = await conn.fetchrow(GET, workspace_id, note_id)
    return row_to_note(row) if row else None


async def list_notes(
    conn: Executor,
    workspace_id: str,
    *,
    session_id: str | None = None,
    note_type: str | None = None,
) -> list[Note]:
    """Most recently updated first."""
    rows = await conn.fetch(LIST, workspace_id, session_id, note_type)
    return [row_to_note(r) for r in rows]


async def list_with_session_names(
    conn: Executor,
    workspace_id: str,
    *,
    session_id: str | None = None,
    note_type: str | None = None,
) -> list[tuple[Note, str | None]]:
    rows = await conn.fetch(LIST_WITH_SESSION_NAME, workspace_id, session_id, note_type)
    return [(row_to_note(r), r["session_name"]) for r in rows]


async def upsert(
    conn: Executor, workspace_id: str, note_id: str, values: NoteValues
) -> tuple[Note, bool]:
    """Create or update; returns the note and whether it was created.

    Raises asyncpg.ForeignKeyViolationError when the workspace does not exist.
    """
    row = await conn.fetchrow(
        UPSERT,
        workspace_id,
        note_id,
        values.title,
        values.content,
        values.session_id,
        values.type,
        values.metadata,
        values.source,
    )
    assert row is not None
    return row_to_note(row), bool(row["inserted"])


async def delete(conn: Executor, workspace_id: str, note_id: str) -> bool:
    return await conn.fetchval(DELETE, workspace_id, note_id) is not None
