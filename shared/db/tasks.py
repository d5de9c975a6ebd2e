"""SQL for the `tasks` table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.db.connect import Connection, Executor
from shared.jsonutil import iso
from shared.models.task import Task

_COLUMNS = """
id, workspace_id, title, objective, status, priority, session_id, assigned_to, labels,
dependencies, acceptance_criteria, verification_commands, comments, column_id, position,
creation_source, created_at, updated_at
"""

GET = "SELECT" + _COLUMNS + "FROM tasks WHERE id = $1"
GET_FOR_UPDATE = GET + " FOR UPDATE"

LIST = (
    "SELECT"
    + _COLUMNS
    + """
FROM tasks
WHERE workspace_id = $1
  AND ($2::text IS NULL OR session_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR assigned_to = $4)
ORDER BY created_at DESC, id
"""
)

# PENDING tasks none of whose dependencies is anything but a COMPLETED task of the same
# workspace (a dependency naming no task at all, or another workspace's task, is not
# completed, so it keeps the task waiting and reveals nothing about that task).
READY = (
    "SELECT"  # noqa: S608 - constant fragments, values are $n parameters
    + _COLUMNS
    + """
FROM tasks t
WHERE t.workspace_id = $1 AND t.status = 'PENDING'
  AND NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(t.dependencies) AS d(dep_id)
      WHERE NOT EXISTS (SELECT 1 FROM tasks c
                        WHERE c.id = d.dep_id AND c.workspace_id = t.workspace_id
                          AND c.status = 'COMPLETED')
  )
ORDER BY t.position, t.created_at, t.id
"""
)

INSERT = (
    """
INSERT INTO tasks (id, workspace_id, title, objective, status, priority, session_id,
                   assigned_to, labels, dependencies, acceptance_criteria,
                   verification_commands, comments, column_id, position, creation_source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
RETURNING"""
    + _COLUMNS
)

UPDATE = (
    """
UPDATE tasks SET title = $2, objective = $3, status = $4, priority = $5, session_id = $6,
                 assigned_to = $7, labels = $8, dependencies = $9, acceptance_criteria = $10,
                 verification_commands = $11, comments = $12, column_id = $13, position = $14,
                 creation_source = $15, updated_at = now()
WHERE id = $1
RETURNING"""
    + _COLUMNS
)

DELETE = "DELETE FROM tasks WHERE id = $1 RETURNING workspace_id"


@dataclass(slots=True)
class TaskValues:
    """Every settable column of one task (a create, or an update after merging)."""

    title: str
    objective: str
    status: str = "PENDING"
    priority: str | None = None
    session_id: str | None = None
    assigned_to: str | None = None
    labels: list[Any] = field(default_factory=list)
    dependencies: list[Any] = field(default_factory=list)
    acceptance_criteria: list[Any] = field(default_factory=list)
    verification_commands: list[Any] = field(default_factory=list)
    comments: list[Any] = field(default_factory=list)
    column_id: str = "backlog"
    position: int = 0
    creation_source: str = "user"

    @classmethod
    def of(cls, task: Task) -> TaskValues:
        return cls(
            title=task.title,
            objective=task.objective,
            status=task.status,
            priority=task.priority,
            session_id=task.session_id,
            assigned_to=task.assigned_to,
            labels=list(task.labels),
            dependencies=list(task.dependencies),
            acceptance_criteria=list(task.acceptance_criteria),
            verification_commands=list(task.verification_commands),
            comments=list(task.comments),
            column_id=task.column_id,
            position=task.position,
            creation_source=task.creation_source,
        )

    def params(self) -> tuple[Any, ...]:
        return (
            self.title,
            self.objective,
            self.status,
            self.priority,
            self.session_id,
            self.assigned_to,
            self.labels,
            self.dependencies,
            self.acceptance_criteria,
            self.verification_commands,
            self.comments,
            self.column_id,
            self.position,
            self.creation_source,
        )


def row_to_task(row: asyncpg.Record) -> Task:
    return Task(
        id=row["id"],
        title=row["title"],
        objective=row["objective"],
        status=row["status"],
        priority=row["priority"],
        workspace_id=row["workspace_id"],
        session_id=row["session_id"],
        assigned_to=row["assigned_to"],
        labels=row["labels"],
        dependencies=row["dependencies"],
        acceptance_criteria=row["acceptance_criteria"],
        verification_commands=row["verification_commands"],
        comments=row["comments"],
        column_id=row["column_id"],
        position=row["position"],
        creation_source=row["creation_source"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
    )


async def get(conn: Executor, task_id: str) -> Task | None:
    row = await conn.fetchrow(GET, task_id)
    return row_to_task(row) if row else None


async def list_tasks(
    conn: Executor,
    workspace_id: str,
    *,
    session_id: str | None = None,
    status: str | None = None,
    assigned_to: str | None = None,
) -> list[Task]:
    """Newest first."""
    rows = await conn.fetch(LIST, workspace_id, session_id, status, assigned_to)
    return [row_to_task(r) for r in rows]


async def ready(conn: Executor, workspace_id: str) -> list[Task]:
    return [row_to_task(r) for r in await conn.fetch(READY, workspace_id)]


async def insert(
    conn: Executor, task_id: str, workspace_id: str, values: TaskValues
) -> Task:
    """Raises asyncpg.UniqueViolationError (id taken) or ForeignKeyViolationError (no workspace)."""
    row = await conn.fetchrow(INSERT, task_id, workspace_id, *values.params())
    assert row is not None
    return row_to_task(row)


async def locked_get(conn: Connection, task_id: str) -> Task | None:
    """The task, row-locked until the caller's transaction ends (read-modify-write)."""
    row = await conn.fetchrow(GET_FOR_UPDATE, task_id)
    return row_to_task(row) if row else None


async def update(conn: Executor, task_id: str, values: TaskValues) -> Task | None:
    row = await conn.fetchrow(UPDATE, task_id, *values.params())
    return row_to_task(row) if row else None


async def delete(conn: Executor, task_id: str) -> str | None:
    """The deleted task's workspace id, or None when it did not exist."""
    value = await conn.fetchval(DELETE, task_id)
    return str(value) if value is not None else None
