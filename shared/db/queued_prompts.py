"""The queued_prompts table: prompts sent with ifBusy "enqueue", in the order they run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.db.connect import Executor

INSERT = """
INSERT INTO queued_prompts (queued_prompt_id, session_id, prompt, text, meta)
VALUES ($1, $2, $3, $4, $5)
"""
FOR_SESSION = """
SELECT queued_prompt_id, prompt, text, meta FROM queued_prompts
WHERE session_id = $1 ORDER BY seq
"""
DELETE = "DELETE FROM queued_prompts WHERE session_id = $1 AND queued_prompt_id = $2"
DELETE_ALL = """
DELETE FROM queued_prompts WHERE session_id = $1 RETURNING queued_prompt_id, seq
"""
# Sessions with queued prompts and no live owner: a restarted, drained or crashed owner
# left them, and any instance may take them up.
ORPHANED = """
SELECT s.session_id::text FROM sessions s
WHERE EXISTS (SELECT 1 FROM queued_prompts q WHERE q.session_id = s.session_id)
  AND (s.owner_instance_id IS NULL OR s.lease_expires_at IS NULL
       OR s.lease_expires_at < now())
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class QueuedRow:
    queued_prompt_id: str
    blocks: list[dict[str, Any]]
    text: str
    meta: dict[str, Any] | None


async def insert(
    conn: Executor,
    queued_prompt_id: uuid.UUID,
    session_id: uuid.UUID,
    blocks: list[dict[str, Any]],
    text: str,
    meta: dict[str, Any] | None,
) -> None:
    await conn.execute(INSERT, queued_prompt_id, session_id, blocks, text, meta)


async def for_session(conn: Executor, session_id: uuid.UUID) -> list[QueuedRow]:
    """The session's queue, next to run first."""
    return [
        QueuedRow(str(r["queued_prompt_id"]), r["prompt"], r["text"], r["meta"])
        for r in await conn.fetch(FOR_SESSION, session_id)
    ]


async def delete(
    conn: Executor, session_id: uuid.UUID, queued_prompt_id: uuid.UUID
) -> bool:
    """Taken off the queue (it starts, or it is dropped); False when it was not there."""
    return str(await conn.execute(DELETE, session_id, queued_prompt_id)) != "DELETE 0"


async def delete_all(conn: Executor, session_id: uuid.UUID) -> list[str]:
    """Drop the whole queue (a disconnect); the ids, in queue order."""
    rows = await conn.fetch(DELETE_ALL, session_id)
    return [str(r["queued_prompt_id"]) for r in sorted(rows, key=lambda r: r["seq"])]


async def orphaned(conn: Executor, limit: int) -> list[str]:
    return [str(r[0]) for r in await conn.fetch(ORPHANED, limit)]
