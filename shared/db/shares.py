"""The session_shares table: read-only links to one session, stored as sha256 hashes."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.db.connect import Executor
from shared.db.tokens import hash_token

# A share token says what it is, so a request carrying one is limited to its session even
# while auth is off, and an API token is never looked up in this table.
TOKEN_PREFIX = "routa_share_"

INSERT = """
INSERT INTO session_shares (share_id, session_id, token_hash, expires_at)
VALUES ($1, $2, $3, CASE WHEN $4::int IS NULL THEN NULL
                         ELSE now() + make_interval(secs => $4::int) END)
RETURNING share_id, session_id, created_at, expires_at
"""
LIST = """
SELECT share_id, session_id, created_at, expires_at
FROM session_shares WHERE session_id = $1 ORDER BY created_at, share_id
"""
DELETE = "DELETE FROM session_shares WHERE session_id = $1 AND share_id = $2"
LOOKUP = """
SELECT sh.share_id, sh.session_id, s.workspace_id, sh.expires_at
FROM session_shares sh JOIN sessions s USING (session_id)
WHERE sh.token_hash = $1
"""
EXISTING = "SELECT share_id FROM session_shares WHERE share_id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class Share:
    share_id: uuid.UUID
    session_id: uuid.UUID
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a share token allows: reading one session (of one workspace) until it expires."""

    share_id: str
    session_id: uuid.UUID
    workspace_id: str
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_token() -> str:
    """A fresh share token (256 bits of randomness), URL-safe: it goes in `/s/<token>`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_share_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


async def create(
    conn: Executor, session_id: uuid.UUID, token: str, expires_in: int | None
) -> Share:
    """Expiry is computed by Postgres's clock, like every other timestamp of the row."""
    row = await conn.fetchrow(
        INSERT, uuid.uuid4(), session_id, hash_token(token), expires_in
    )
    assert row is not None
    return Share(**dict(row))


async def list_for(conn: Executor, session_id: uuid.UUID) -> list[Share]:
    return [Share(**dict(r)) for r in await conn.fetch(LIST, session_id)]


async def delete(conn: Executor, session_id: uuid.UUID, share_id: uuid.UUID) -> bool:
    """Revoke: the row goes, so the token is unknown from now on."""
    status: str = await conn.execute(DELETE, session_id, share_id)
    return status.endswith(" 1")


async def lookup(conn: Executor, token: str) -> Grant | None:
    """The grant of a share token, or None when it is unknown (never made, revoked, or its
    session deleted). Expiry is left to the caller, who may cache the answer."""
    row = await conn.fetchrow(LOOKUP, hash_token(token))
    if row is None:
        return None
    return Grant(
        share_id=str(row["share_id"]),
        session_id=row["session_id"],
        workspace_id=row["workspace_id"],
        expires_at=row["expires_at"],
    )


async def existing(conn: Executor, share_ids: list[str]) -> set[str]:
    """Which of these shares still exist (streams re-check after a missed revocation)."""
    rows = await conn.fetch(EXISTING, [uuid.UUID(s) for s in share_ids])
    return {str(r["share_id"]) for r in rows}
