"""Share links as the query service takes and returns them (read-only links to one session)."""

from __future__ import annotations

from pydantic import Field, StrictInt

from shared.models.base import WireModel

# A link lives at most a year; without expiresInSeconds it lives until it is revoked.
MAX_SHARE_SECONDS = 366 * 24 * 3600


class ShareCreate(WireModel):
    """`POST /api/sessions/{id}/shares`: strict, so `1.5`, `"60"` and `true` are refused."""

    expires_in_seconds: StrictInt | None = Field(
        default=None, ge=1, le=MAX_SHARE_SECONDS
    )


class ShareLink(WireModel):
    """A share without its token: the token is shown once, in the create answer."""

    share_id: str
    session_id: str
    expires_at: str | None = None
    created_at: str
