"""The session as the read side returns it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from shared.models.base import WireModel

Role = Literal["ROUTA", "CRAFTER", "GATE", "DEVELOPER"]
AcpStatus = Literal["connecting", "ready", "error", "closed"]
SessionStatus = Literal["active", "idle", "closed"]
ContinuityStatus = Literal["active", "restorable", "stale", "interrupted"]
ROLES: tuple[str, ...] = ("ROUTA", "CRAFTER", "GATE", "DEVELOPER")
SESSION_STATUSES: tuple[str, ...] = ("active", "idle", "closed")
# A session name is 1-200 code points after trimming, wherever it comes from.
NAME_MAX = 200


class ResumeCapabilities(BaseModel):
    supported: bool
    mode: Literal["native", "replay", "both"]


class Session(WireModel):
    session_id: str
    name: str | None = None
    workspace_id: str
    cwd: str
    branch: str | None = None
    provider: str
    role: Role = "CRAFTER"
    mode_id: str | None = None
    model: str | None = None
    parent_session_id: str | None = None
    specialist_id: str | None = None
    routa_agent_id: str | None = None
    acp_status: AcpStatus
    acp_error: str | None = None
    status: SessionStatus
    created_at: str
    last_activity: str
    owner_instance_id: str | None = None
    continuity_status: ContinuityStatus
    resume_capabilities: ResumeCapabilities
    # latest context figures and cost, token sums of the turns; absent before a report
    usage: dict[str, Any] | None = None


class SessionRef(WireModel):
    """Parent and children in the session context."""

    session_id: str
    name: str | None = None
    status: SessionStatus
