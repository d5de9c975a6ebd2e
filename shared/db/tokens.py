"""The api_tokens table: bearer tokens stored as sha256 hashes, scoped to workspaces."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from shared.db.connect import Executor

ALL_WORKSPACES = "*"

INSERT = """
INSERT INTO api_tokens (token_hash, label, workspaces)
VALUES ($1, $2, $3)
RETURNING token_hash, label, workspaces, created_at, revoked_at
"""
LOOKUP = (
    "SELECT workspaces FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
)
# Auth is required once any token was ever created: the auth_config flag (set by a trigger
# on api_tokens, never cleared by the product), or an active token should the flag be gone.
AUTH_REQUIRED = """
SELECT EXISTS (SELECT 1 FROM auth_config)
    OR EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL)
"""
ANY_ACTIVE = "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL)"
LIST = """
SELECT token_hash, label, workspaces, created_at, revoked_at
FROM api_tokens ORDER BY created_at, token_hash
"""
FIND_BY_PREFIX = """
SELECT token_hash FROM api_tokens WHERE starts_with(token_hash, $1) LIMIT 2
"""
REVOKE = """
UPDATE api_tokens SET revoked_at = now()
WHERE token_hash = $1 AND revoked_at IS NULL
RETURNING token_hash
"""


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_hash: str
    label: str | None
    workspaces: list[str]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def id(self) -> str:
        """What `routa-tokens list` shows and `revoke` takes: the hash's first 12 hex digits."""
        return self.token_hash[:12]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh bearer token (256 bits of randomness)."""
    return "routa_" + secrets.token_urlsafe(32)


async def create(
    conn: Executor, token: str, workspaces: list[str], label: str | None = None
) -> TokenRow:
    row = await conn.fetchrow(INSERT, hash_token(token), label, workspaces)
    assert row is not None
    return TokenRow(**dict(row))


async def lookup(conn: Executor, token_hash: str) -> list[str] | None:
    """The workspaces of an active token, or None when it is unknown or revoked."""
    workspaces: list[str] | None = await conn.fetchval(LOOKUP, token_hash)
    return workspaces


async def auth_required(conn: Executor) -> bool:
    """True once a token was ever created here, even if every token is revoked now."""
    return bool(await conn.fetchval(AUTH_REQUIRED))


async def any_active(conn: Executor) -> bool:
    return bool(await conn.fetchval(ANY_ACTIVE))


async def list_all(conn: Executor) -> list[TokenRow]:
    return [TokenRow(**dict(r)) for r in await conn.fetch(LIST)]


async def find(conn: Executor, id_prefix: str) -> str | None:
    """The full hash for an id (a unique hash prefix); None when none or several match."""
    rows = await conn.fetch(FIND_BY_PREFIX, id_prefix.lower())
    return rows[0]["token_hash"] if len(rows) == 1 else None


async def revoke(conn: Executor, token_hash: str) -> bool:
    return await conn.fetchval(REVOKE, token_hash) is not None
