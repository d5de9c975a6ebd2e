"""What auth holds in a process: the token store, the rate limiters, and their state.

The checks that read it from the app are in auth.py; this module holds no AppKey, so
keys.py can name its types without an import cycle.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import asyncpg

from services.common.singleflight import SingleFlight
from shared.db import sessions as sessions_db
from shared.db import shares as shares_db
from shared.db import tasks as tasks_db
from shared.db import tokens as tokens_db
from shared.db.connect import Pool
from shared.errors import DependencyDown

# auth logs under one name, whichever of its modules writes
logger = logging.getLogger("services.common.auth")

Scope = frozenset[str] | None  # None: every workspace
AuthMode = Literal["auto", "on", "off"]  # the AUTH setting
DEFAULT_RATE = (
    50.0  # requests per second per token when auth is on and RATE_LIMIT is unset
)
CACHE_MAX = 10_000  # entries of each in-process cache before it is cleared

T = TypeVar("T")

PG_ERRORS = (OSError, ConnectionError, TimeoutError, asyncpg.PostgresError)


class Unknown:
    """What a lookup answers for a token that is none of ours (a Scope of None is every
    workspace, so it cannot say this)."""


UNKNOWN = Unknown()


def parse_auth_tokens(spec: str | None) -> dict[str, Scope]:
    """`token=ws1,ws2;token2=*` → {sha256(token): scope}; a malformed entry stops the process."""
    tokens: dict[str, Scope] = {}
    for i, entry in enumerate((spec or "").split(";")):
        entry = entry.strip()
        if not entry:
            continue
        token, sep, workspaces = entry.partition("=")
        names = [w.strip() for w in workspaces.split(",") if w.strip()]
        if not sep or not token.strip() or not names:
            raise ValueError(
                f"AUTH_TOKENS entry {i + 1} is not token=workspace[,workspace…] or token=*"
            )
        tokens[tokens_db.hash_token(token.strip())] = scope_of(names)
    return tokens


def scope_of(workspaces: Iterable[str]) -> Scope:
    names = frozenset(workspaces)
    return None if tokens_db.ALL_WORKSPACES in names else names


class TokenStore:
    """AUTH_TOKENS in memory; api_tokens through a short cache (stale answers while PG is down).

    Whether auth is on only ever goes from off to on inside a process: AUTH=on/off fix it,
    AUTH_TOKENS makes it on, and in "auto" the table's flag is re-read (every `ttl` seconds)
    only while it is still off.
    """

    def __init__(
        self, env: dict[str, Scope], pool: Pool, ttl: float, mode: AuthMode = "auto"
    ) -> None:
        self.env = env
        self.mode = mode
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Scope | Unknown]] = {}
        self._shares: dict[str, tuple[float, shares_db.Grant | None]] = {}
        # share ids revoked while this process ran: never served again, whatever is cached
        self._revoked: set[str] = set()
        self._on = mode == "on" or (mode == "auto" and bool(env))
        self._table_checked = -math.inf
        # an expired answer is read once however many requests ask for it meanwhile
        self._table_reads: SingleFlight[str, bool] = SingleFlight()
        self._token_reads: SingleFlight[str, Scope | Unknown] = SingleFlight()
        self._share_reads: SingleFlight[str, shares_db.Grant | None] = SingleFlight()

    async def refresh_table_state(self, *, at_startup: bool = False) -> bool:
        """Read the table's flag (auto mode); off → on is logged, on never goes back."""
        if self.mode != "auto" or self._on:
            return self._on
        required = await tokens_db.auth_required(self._pool)
        self._table_checked = time.monotonic()
        if required:
            self._on = True
            if at_startup:
                return True  # the start-up line says so; this is no change
            logger.warning(
                "auth turned ON: a token was created in api_tokens; every /api/* request "
                "now needs a bearer token, also after all tokens are revoked (AUTH=off "
                "turns it off)"
            )
        return self._on

    def enabled_now(self) -> bool | None:
        """The cached answer without awaiting; None when the table must be re-read."""
        if self._on or self.mode != "auto":
            return self._on
        if time.monotonic() - self._table_checked >= self._ttl:
            return None
        return False

    async def enabled(self) -> bool:
        on = self.enabled_now()
        if on is not None:
            return on
        return await self._table_reads.run("auth_required", self._read_table_state)

    async def _read_table_state(self) -> bool:
        try:
            return await self.refresh_table_state()
        except PG_ERRORS as err:
            # keep the last answer: Postgres being down must not switch auth off or on
            logger.warning("api_tokens not readable, auth state kept: %r", err)
            return self._on

    async def lookup(self, token: str) -> Scope | Unknown:
        token_hash = tokens_db.hash_token(token)
        if token_hash in self.env:
            return self.env[token_hash]
        cached = self._cache.get(token_hash)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        return await self._token_reads.run(
            token_hash, lambda: self._read_token(token_hash)
        )

    async def _read_token(self, token_hash: str) -> Scope | Unknown:
        async def read() -> Scope | Unknown:
            workspaces = await tokens_db.lookup(self._pool, token_hash)
            return UNKNOWN if workspaces is None else scope_of(workspaces)

        return await self._read_through(self._cache, token_hash, read, "the token")

    async def lookup_share(self, token: str) -> shares_db.Grant | None:
        """The grant of a share token (expired or not), None when unknown or revoked."""
        token_hash = tokens_db.hash_token(token)
        cached = self._shares.get(token_hash)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            grant = cached[1]
        else:
            grant = await self._share_reads.run(
                token_hash, lambda: self._read_share(token, token_hash)
            )
        # after the read: a revocation heard while it was under way counts
        if grant is None or grant.share_id in self._revoked:
            return None
        return grant

    async def _read_share(self, token: str, token_hash: str) -> shares_db.Grant | None:
        return await self._read_through(
            self._shares,
            token_hash,
            lambda: shares_db.lookup(self._pool, token),
            "the share token",
        )

    @staticmethod
    async def _read_through(
        cache: dict[str, tuple[float, T]],
        key: str,
        read: Callable[[], Awaitable[T]],
        what: str,
    ) -> T:
        """The table's answer, cached; the last one while Postgres is down (503 without)."""
        now = time.monotonic()
        cached = cache.get(key)
        try:
            value = await read()
        except PG_ERRORS as err:
            if cached is not None:
                return cached[1]
            raise DependencyDown(
                f"Postgres unavailable: cannot check {what} ({err.__class__.__name__})"
            ) from err
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[key] = (now, value)
        return value

    def forget_share(self, share_id: str) -> None:
        """A revoked share: refused from now on, even by a lookup already under way."""
        if len(self._revoked) >= CACHE_MAX:
            self._revoked.clear()  # share ids are never reused; the table says the rest
        self._revoked.add(share_id)
        for token_hash, (_, grant) in list(self._shares.items()):
            if grant is not None and grant.share_id == share_id:
                del self._shares[token_hash]

    def share_revoked(self, share_id: str) -> bool:
        return share_id in self._revoked

    def forget_all_shares(self) -> None:
        """Revocations may have been missed (Redis was away): ask the table again."""
        self._shares.clear()


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per key, in process: `rate` per second, up to `burst` at once."""

    rate: float
    burst: float
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float:
        """0 when the request may go; else the seconds until one more token is there."""
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self.buckets) >= CACHE_MAX and key not in self.buckets:
                self._prune(now)
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        for k, (_, last) in list(self.buckets.items()):
            if now - last >= full_after:
                del self.buckets[k]


@dataclass(slots=True)
class AuthState:
    store: TokenStore
    pool: Pool
    rate_limit: float | None
    rate_burst: int | None
    limiters: dict[float, RateLimiter] = field(default_factory=dict)
    # a session never changes workspace: its id → workspace is cached for good
    session_workspaces: dict[str, str] = field(default_factory=dict)
    session_reads: SingleFlight[str, str | None] = field(default_factory=SingleFlight)

    def limiter(self, authed: bool) -> RateLimiter | None:
        rate = self.rate_limit
        if rate is None:
            rate = DEFAULT_RATE if authed else 0.0
        if rate <= 0:
            return None
        limiter = self.limiters.get(rate)
        if limiter is None:
            burst = float(self.rate_burst or max(1, math.ceil(rate * 2)))
            limiter = self.limiters[rate] = RateLimiter(rate, burst)
        return limiter

    async def session_workspace(self, session_id: str) -> str | None:
        cached = self.session_workspaces.get(session_id)
        if cached is not None:
            return cached
        return await self.session_reads.run(
            session_id, lambda: self._read_session_workspace(session_id)
        )

    async def _read_session_workspace(self, session_id: str) -> str | None:
        parsed = sessions_db.parse_session_id(session_id)
        if parsed is None:
            return None
        workspace = await sessions_db.workspace_of(self.pool, parsed)
        if workspace is None:
            return None
        if len(self.session_workspaces) >= CACHE_MAX:
            self.session_workspaces.clear()
        self.session_workspaces[session_id] = workspace
        return workspace

    async def task_workspace(self, task_id: str) -> str | None:
        if "\x00" in task_id:
            return None
        task = await tasks_db.get(self.pool, task_id)
        return task.workspace_id if task is not None else None
