"""SQL for the `workspaces` table and its `codebases` (they live and die together)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.db.connect import Connection, Executor
from shared.db.sessions import LIVE_OWNER
from shared.jsonutil import iso
from shared.models.workspace import Codebase, Workspace

_SELECT = """
SELECT w.id, w.title, w.status, w.max_concurrent_turns, w.created_at, w.updated_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'repoPath', c.repo_path,
                                                     'branch', c.branch)
                                  ORDER BY c.position, c.id)
                 FROM codebases c WHERE c.workspace_id = w.id), '[]'::jsonb) AS codebases
FROM workspaces w
"""

GET = _SELECT + "WHERE w.id = $1"
LIST = _SELECT + "ORDER BY w.created_at, w.id"
EXISTS = "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)"

INSERT = """
INSERT INTO workspaces (id, title, max_concurrent_turns) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

UPDATE = """
UPDATE workspaces SET title = COALESCE($2, title), status = COALESCE($3, status),
                      max_concurrent_turns = CASE WHEN $4::boolean THEN $5::integer
                                                  ELSE max_concurrent_turns END,
                      updated_at = now()
WHERE id = $1
RETURNING id
"""

REPO_PATHS = "SELECT repo_path FROM codebases WHERE workspace_id = $1"

DELETE_CODEBASES = "DELETE FROM codebases WHERE workspace_id = $1"

INSERT_CODEBASE = """
INSERT INTO codebases (workspace_id, id, repo_path, branch, position)
VALUES ($1, $2, $3, $4, $5)
"""

LOCK = "SELECT id FROM workspaces WHERE id = $1 FOR UPDATE"

# The sessions a workspace delete must stop and announce; read under the workspace lock, so
# no session can be added between this read and the delete (its FK check would wait).
SESSIONS_TO_STOP = f"""
SELECT session_id::text AS session_id, {LIVE_OWNER} AS owner_instance_id
FROM sessions WHERE workspace_id = $1
"""  # noqa: S608 - built from the constants above, no input

DELETE = "DELETE FROM workspaces WHERE id = $1"


class DuplicateWorkspace(Exception):
    """A workspace with that id exists already."""


@dataclass(slots=True, frozen=True)
class DeletedSession:
    session_id: str
    owner_instance_id: str | None


def _row_to_workspace(row: asyncpg.Record) -> Workspace:
    return Workspace(
        id=row["id"],
        title=row["title"],
        status=row["status"],
        max_concurrent_turns=row["max_concurrent_turns"],
        codebases=[
            Codebase(id=c["id"], repo_path=c["repoPath"], branch=c.get("branch"))
            for c in row["codebases"]
        ],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
    )


@dataclass(slots=True, frozen=True)
class CodebaseValues:
    id: str | None
    repo_path: str
    branch: str | None = None


async def exists(conn: Executor, workspace_id: str) -> bool:
    return bool(await conn.fetchval(EXISTS, workspace_id))


async def get(conn: Executor, workspace_id: str) -> Workspace | None:
    row = await conn.fetchrow(GET, workspace_id)
    return _row_to_workspace(row) if row else None


async def repo_paths(conn: Executor, workspace_id: str) -> list[str]:
    """The codebase paths registered on a workspace (a session cwd may lie in one)."""
    return [r["repo_path"] for r in await conn.fetch(REPO_PATHS, workspace_id)]


async def list_workspaces(conn: Executor) -> list[Workspace]:
    """Oldest first, so `default` leads."""
    return [_row_to_workspace(r) for r in await conn.fetch(LIST)]


async def _replace_codebases(
    conn: Connection, workspace_id: str, codebases: Sequence[CodebaseValues]
) -> None:
    await conn.execute(DELETE_CODEBASES, workspace_id)
    await conn.executemany(
        INSERT_CODEBASE,
        [
            (workspace_id, c.id or str(uuid.uuid4()), c.repo_path, c.branch, i)
            for i, c in enumerate(codebases)
        ],
    )


async def create(
    conn: Connection,
    workspace_id: str,
    title: str,
    codebases: Sequence[CodebaseValues] = (),
    max_concurrent_turns: int | None = None,
) -> Workspace:
    """Workspace and codebases in one transaction; DuplicateWorkspace when the id is taken."""
    async with conn.transaction():
        inserted = await conn.fetchval(
            INSERT, workspace_id, title, max_concurrent_turns
        )
        if inserted is None:
            raise DuplicateWorkspace(workspace_id)
        await _replace_codebases(conn, workspace_id, codebases)
        row = await conn.fetchrow(GET, workspace_id)
    assert row is not None
    return _row_to_workspace(row)


async def update(
    conn: Connection,
    workspace_id: str,
    *,
    title: str | None = None,
    status: str | None = None,
    codebases: Sequence[CodebaseValues] | None = None,
    max_concurrent_turns: tuple[int | None] | None = None,
) -> Workspace | None:
    """None when the workspace does not exist; codebases, when given, replace the old set;
    `max_concurrent_turns`, when given, is `(cap,)` with None for no cap."""
    set_cap = max_concurrent_turns is not None
    cap = max_concurrent_turns[0] if max_concurrent_turns is not None else None
    async with conn.transaction():
        updated = await conn.fetchval(UPDATE, workspace_id, title, status, set_cap, cap)
        if updated is None:
            return None
        if codebases is not None:
            await _replace_codebases(conn, workspace_id, codebases)
        row = await conn.fetchrow(GET, workspace_id)
    assert row is not None
    return _row_to_workspace(row)


async def delete(conn: Connection, workspace_id: str) -> list[DeletedSession] | None:
    """Delete the workspace; its sessions, events, notes and tasks go by ON DELETE CASCADE.

    Returns the sessions that were deleted (with their live owner), or None when the
    workspace did not exist.
    """
    async with conn.transaction():
        if await conn.fetchval(LOCK, workspace_id) is None:
            return None
        rows = await conn.fetch(SESSIONS_TO_STOP, workspace_id)
        await conn.execute(DELETE, workspace_id)
    return [DeletedSession(r["session_id"], r["owner_instance_id"]) for r in rows]
