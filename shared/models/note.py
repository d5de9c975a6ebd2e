"""Notes: keyed by (workspaceId, id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.models.base import WireModel

NoteType = Literal["spec", "task", "general"]
NoteSource = Literal["agent", "user", "system"]
NOTE_TYPES: tuple[str, ...] = ("spec", "task", "general")
NOTE_SOURCES: tuple[str, ...] = ("agent", "user", "system")


class NoteMetadata(WireModel):
    type: NoteType = "general"
    task_status: str | None = None
    assigned_agent_ids: list[str] | None = None
    parent_note_id: str | None = None
    linked_task_id: str | None = None
    custom: Any = None


class Note(WireModel):
    id: str
    title: str
    content: str
    workspace_id: str
    session_id: str | None = None
    metadata: NoteMetadata
    source: NoteSource
    created_at: str
    updated_at: str


class NoteMetadataIn(WireModel):
    """Metadata as sent; `type` is checked by hand so the 400 can name the value."""

    type: str | None = None
    task_status: str | None = None
    assigned_agent_ids: list[str] | None = None
    parent_note_id: str | None = None
    linked_task_id: str | None = None
    custom: Any = None


class NoteWrite(WireModel):
    """POST /api/notes: a create, or an update when `noteId` names an existing note."""

    workspace_id: str | None = None
    note_id: str | None = Field(default=None, min_length=1)
    title: str | None = None
    content: str | None = None
    session_id: str | None = None
    type: str | None = None
    metadata: NoteMetadataIn | None = None
    source: str | None = None


class NoteGroup(WireModel):
    """One `groupBy=session` group; the group of notes without a session has no sessionId."""

    session_id: str | None = None
    session_name: str | None = None
    notes: list[Note]
