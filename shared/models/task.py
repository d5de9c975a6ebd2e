"""Tasks and the status <-> kanban column mapping."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.models.base import WireModel

TaskStatus = Literal[
    "PENDING",
    "IN_PROGRESS",
    "REVIEW_REQUIRED",
    "COMPLETED",
    "NEEDS_FIX",
    "BLOCKED",
    "CANCELLED",
]
TASK_STATUSES: tuple[str, ...] = (
    "PENDING",
    "IN_PROGRESS",
    "REVIEW_REQUIRED",
    "COMPLETED",
    "NEEDS_FIX",
    "BLOCKED",
    "CANCELLED",
)
TaskPriority = Literal["low", "medium", "high", "urgent"]
TASK_PRIORITIES: tuple[str, ...] = ("low", "medium", "high", "urgent")

STATUS_TO_COLUMN: dict[str, str] = {
    "PENDING": "backlog",
    "IN_PROGRESS": "dev",
    "REVIEW_REQUIRED": "review",
    "BLOCKED": "blocked",
    "COMPLETED": "done",
    "NEEDS_FIX": "dev",
    "CANCELLED": "done",
}
COLUMN_TO_STATUS: dict[str, str] = {
    "backlog": "PENDING",
    "dev": "IN_PROGRESS",
    "review": "REVIEW_REQUIRED",
    "blocked": "BLOCKED",
    "done": "COMPLETED",
}


class Task(WireModel):
    id: str
    title: str
    objective: str
    status: TaskStatus
    priority: TaskPriority | None = None
    workspace_id: str
    session_id: str | None = None
    assigned_to: str | None = None
    labels: list[Any] = Field(default_factory=list)
    dependencies: list[Any] = Field(default_factory=list)
    acceptance_criteria: list[Any] = Field(default_factory=list)
    verification_commands: list[Any] = Field(default_factory=list)
    comments: list[Any] = Field(default_factory=list)
    column_id: str
    position: int
    creation_source: str
    created_at: str
    updated_at: str


class TaskFields(WireModel):
    """Fields a client may set on create and PATCH; enumerations are checked by hand."""

    title: str | None = None
    objective: str | None = None
    status: str | None = None
    priority: str | None = None
    session_id: str | None = None
    assigned_to: str | None = None
    labels: list[str] | None = None
    dependencies: list[str] | None = None
    acceptance_criteria: list[str] | None = None
    verification_commands: list[str] | None = None
    comments: list[Any] | None = None
    column_id: str | None = None
    # a Postgres integer: past it is a 400 naming position, not a 500
    position: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    creation_source: str | None = None


class TaskCreate(TaskFields):
    id: str | None = Field(default=None, min_length=1)
    workspace_id: str | None = None


class TaskStatusChange(WireModel):
    status: str | None = None
