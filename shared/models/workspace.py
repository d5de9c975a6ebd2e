"""Workspaces and their codebases."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt

from shared.models.base import WireModel

WorkspaceStatus = Literal["active", "archived"]
WORKSPACE_STATUSES: tuple[str, ...] = ("active", "archived")
DEFAULT_WORKSPACE_ID = "default"
MAX_CONCURRENT_TURNS = 100_000


class Codebase(WireModel):
    id: str
    repo_path: str
    branch: str | None = None


class Workspace(WireModel):
    id: str
    title: str
    status: WorkspaceStatus
    codebases: list[Codebase] = Field(default_factory=list)
    # running turns across the workspace's sessions; absent: unlimited
    max_concurrent_turns: int | None = None
    created_at: str
    updated_at: str


class CodebaseIn(WireModel):
    """A codebase as sent by a client; the id is generated when absent."""

    id: str | None = Field(default=None, min_length=1, max_length=200)
    repo_path: str = Field(min_length=1)
    branch: str | None = None


class WorkspaceCreate(WireModel):
    id: str | None = Field(default=None, min_length=1, max_length=200)
    title: str | None = None
    codebases: list[CodebaseIn] | None = None
    max_concurrent_turns: StrictInt | None = Field(
        default=None, ge=1, le=MAX_CONCURRENT_TURNS
    )


class WorkspacePatch(WireModel):
    title: str | None = None
    status: str | None = None
    codebases: list[CodebaseIn] | None = None
    # null clears the cap (unlimited); absent leaves it as it is
    max_concurrent_turns: StrictInt | None = Field(
        default=None, ge=1, le=MAX_CONCURRENT_TURNS
    )
