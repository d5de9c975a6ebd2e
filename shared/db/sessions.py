"""SQL for the `sessions` table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.db.connect import Connection, Executor, Pool
from shared.jsonutil import iso
from shared.models.session import Session, SessionRef
from shared.providers import resume_capabilities_for

STALE_AFTER = timedelta(days=7)

# The one definition of a session's effective status: what the owner wrote, unless its
# lease ran out (then no live agent is known), and of its owner: only while the lease holds.
EFFECTIVE_STATUS = (
    "CASE WHEN status <> 'closed' AND (lease_expires_at IS NULL OR lease_expires_at < now())"
    " THEN 'closed' ELSE status END"
)
LIVE_OWNER = "CASE WHEN lease_expires_at >= now() THEN owner_instance_id END"

_SELECT = f"""
SELECT session_id::text AS session_id, workspace_id, name, cwd, branch, provider, role,
       mode_id, model, parent_session_id::text AS parent_session_id, specialist_id,
       routa_agent_id, acp_status, acp_error,
       {EFFECTIVE_STATUS} AS status,
       {LIVE_OWNER} AS owner_instance_id,
       created_at, last_activity, last_event_id, auto_approve_permissions,
       custom_command, custom_args, mcp_servers, lease_generation, usage
FROM sessions
"""  # noqa: S608 - built from the constants above, no input

GET = _SELECT + "WHERE session_id = $1"


# The list, one SQL text per combination of the filters given (2^4 fixed texts, values
# always $n parameters). One text with optional filters (`$1 IS NULL OR workspace_id = $1`)
# has a generic plan that can use no index (a sequential scan and a sort of the whole
# table), and asyncpg's prepared statements may run on the generic plan after five calls.
# Each text here names only its own filters, so its generic plan is an index scan of
# sessions_workspace_created_idx, sessions_parent_idx or sessions_created_idx. The one
# form left on a sequential scan is a status filter alone without a limit: it answers
# with every session of that effective status, which takes reading the whole table.
def list_sql(*, workspace: bool, parent: bool, status: bool, limit: bool) -> str:
    """The LIST statement for the filters given; parameters in this order, numbered $1.."""
    where: list[str] = []
    params = 0
    if workspace:
        params += 1
        where.append(f"workspace_id = ${params}")
    if parent:
        params += 1
        where.append(f"parent_session_id = ${params}")
    if status:
        params += 1
        where.append(f"{EFFECTIVE_STATUS} = ${params}")
    sql = _SELECT
    if where:
        sql += "WHERE " + " AND ".join(where) + "\n"
    # qualified: the bare name would be the select list's text session_id
    sql += "ORDER BY sessions.created_at DESC, sessions.session_id\n"
    if limit:
        params += 1
        sql += f"LIMIT ${params}\n"
    return sql


LIST_FORMS: dict[tuple[bool, bool, bool, bool], str] = {
    (w, p, s, n): list_sql(workspace=w, parent=p, status=s, limit=n)
    for w in (False, True)
    for p in (False, True)
    for s in (False, True)
    for n in (False, True)
}

INSERT = """
INSERT INTO sessions (session_id, workspace_id, name, cwd, branch, provider, role, mode_id,
                      model, parent_session_id, specialist_id, acp_status, status,
                      owner_instance_id, lease_expires_at, auto_approve_permissions,
                      custom_command, custom_args, mcp_servers, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
        CASE WHEN $14::text IS NULL THEN NULL ELSE now() + make_interval(secs => $15) END,
        $16, $17, $18, $19, $20)
"""

# session/new in one statement (one round trip, atomic on its own): the row with its
# counter at 1, event 1 ($21 kind, $22 payload) and the row as GET reads it.
INSERT_WITH_FIRST_EVENT = (
    "WITH new_session AS ("  # noqa: S608 - constant fragments, values are $n parameters
    + """
    INSERT INTO sessions (session_id, workspace_id, name, cwd, branch, provider, role,
                          mode_id, model, parent_session_id, specialist_id, acp_status,
                          status, owner_instance_id, lease_expires_at,
                          auto_approve_permissions, custom_command, custom_args,
                          mcp_servers, idempotency_key, last_event_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
            CASE WHEN $14::text IS NULL THEN NULL
                 ELSE now() + make_interval(secs => $15) END,
            $16, $17, $18, $19, $20, 1)
    RETURNING *
), first_event AS (
    INSERT INTO session_events (session_id, event_id, kind, payload)
    SELECT session_id, 1, $21, $22 FROM new_session
)
"""
    + _SELECT.replace("FROM sessions", "FROM new_session")
)

FIND_IDEMPOTENT = """
SELECT session_id FROM sessions
WHERE workspace_id = $1 AND idempotency_key = $2
  AND created_at > now() - make_interval(secs => $3)
ORDER BY created_at DESC LIMIT 1
"""

RENAME = "UPDATE sessions SET name = $2, updated_at = now() WHERE session_id = $1 RETURNING workspace_id"

# acp_status/status change in the write that stores their event (whoever reads one
# finds the other): session_events.APPEND_BATCH with a state, CLOSE_AND_RELEASE in the
# transaction that appends acp_status closed, CLOSE_ORPHAN in the transaction that
# appends the end events.

SET_MODE = "UPDATE sessions SET mode_id = $2, updated_at = now() WHERE session_id = $1"
SET_MODEL = "UPDATE sessions SET model = $2, updated_at = now() WHERE session_id = $1"
SET_CONFIG_OPTIONS = (
    "UPDATE sessions SET config_options = $2, updated_at = now() WHERE session_id = $1"
)
CONFIG_OPTIONS = "SELECT config_options FROM sessions WHERE session_id = $1"
SET_AGENT_ID = (
    "UPDATE sessions SET routa_agent_id = $2, updated_at = now() WHERE session_id = $1"
)

RELEASE_OWNER = """
UPDATE sessions SET owner_instance_id = NULL, lease_expires_at = NULL
WHERE session_id = $1 AND owner_instance_id = $2
"""

CHILDREN = f"""
SELECT session_id::text AS session_id, name,
       {EFFECTIVE_STATUS} AS status
FROM sessions WHERE parent_session_id = $1 AND ($2::text IS NULL OR workspace_id = $2)
ORDER BY created_at
"""  # noqa: S608 - built from the constants above, no input

REF = f"""
SELECT session_id::text AS session_id, name,
       {EFFECTIVE_STATUS} AS status
FROM sessions WHERE session_id = $1 AND ($2::text IS NULL OR workspace_id = $2)
"""  # noqa: S608 - built from the constants above, no input

WORKSPACE_OF = "SELECT workspace_id FROM sessions WHERE session_id = $1"


# Naming rule for session ids, everywhere: the variable is `session_id`, whatever its form;
# the annotation says which (text as a request or the live registry has it, or the UUID
# the SQL here takes). Where one scope holds both forms of the same session, the UUID is
# `session_id` and the text is `session_key`. JSON keeps `sessionId`.
def parse_session_id(value: str | None) -> uuid.UUID | None:
    """A UUID, or None for anything that cannot be one of our ids (which then is unknown)."""
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _continuity(
    status: str, acp_status: str, last_activity: datetime, provider: str
) -> str:
    if status != "closed":
        return "active"
    if datetime.now(UTC) - last_activity > STALE_AFTER:
        return "stale"
    caps = resume_capabilities_for(provider)
    return "restorable" if caps.get("supported") else "interrupted"


def row_to_session(row: asyncpg.Record) -> Session:
    return Session(
        session_id=row["session_id"],
        name=row["name"],
        workspace_id=row["workspace_id"],
        cwd=row["cwd"],
        branch=row["branch"],
        provider=row["provider"],
        role=row["role"],
        mode_id=row["mode_id"],
        model=row["model"],
        parent_session_id=row["parent_session_id"],
        specialist_id=row["specialist_id"],
        routa_agent_id=row["routa_agent_id"],
        acp_status=row["acp_status"],
        acp_error=row["acp_error"] if row["acp_status"] == "error" else None,
        status=row["status"],
        created_at=iso(row["created_at"]),
        last_activity=iso(row["last_activity"]),
        owner_instance_id=row["owner_instance_id"],
        continuity_status=_continuity(
            row["status"], row["acp_status"], row["last_activity"], row["provider"]
        ),
        resume_capabilities=resume_capabilities_for(row["provider"]),
        usage=row["usage"],
    )


@dataclass(slots=True)
class SessionRow:
    """Everything the gateway needs to (re)start a session's agent."""

    session: Session
    last_event_id: int
    auto_approve_permissions: bool
    custom_command: str | None
    custom_args: list[str] | None
    mcp_servers: list[Any]
    # the lease's fencing token as read (session/new: the owner's own)
    lease_generation: int = 0


async def get(conn: Executor, session_id: uuid.UUID) -> Session | None:
    row = await conn.fetchrow(GET, session_id)
    return row_to_session(row) if row else None


async def get_row(conn: Executor, session_id: uuid.UUID) -> SessionRow | None:
    row = await conn.fetchrow(GET, session_id)
    if row is None:
        return None
    return _session_row(row)


def _session_row(row: asyncpg.Record) -> SessionRow:
    return SessionRow(
        session=row_to_session(row),
        last_event_id=row["last_event_id"],
        auto_approve_permissions=row["auto_approve_permissions"],
        custom_command=row["custom_command"],
        custom_args=row["custom_args"],
        mcp_servers=row["mcp_servers"] or [],
        lease_generation=row["lease_generation"],
    )


def list_statement(
    workspace_id: str | None,
    parent_session_id: uuid.UUID | None,
    status: str | None,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """The LIST_FORMS text for the filters given (None: not given) and its arguments."""
    given = (workspace_id, parent_session_id, status, limit)
    form = LIST_FORMS[
        (
            workspace_id is not None,
            parent_session_id is not None,
            status is not None,
            limit is not None,
        )
    ]
    return form, [value for value in given if value is not None]


async def list_sessions(
    conn: Executor,
    *,
    workspace_id: str | None = None,
    parent_session_id: uuid.UUID | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[Session]:
    """Newest first; `status` filters on the effective status (after the lease check)."""
    sql, args = list_statement(workspace_id, parent_session_id, status, limit)
    rows = await conn.fetch(sql, *args)
    return [row_to_session(r) for r in rows]


@dataclass(slots=True)
class NewSession:
    session_id: uuid.UUID
    workspace_id: str
    cwd: str
    provider: str
    role: str = "CRAFTER"
    name: str | None = None
    branch: str | None = None
    mode_id: str | None = None
    model: str | None = None
    parent_session_id: uuid.UUID | None = None
    specialist_id: str | None = None
    acp_status: str = "connecting"
    status: str = "idle"
    owner_instance_id: str | None = None
    lease_ttl: float = 15.0
    auto_approve_permissions: bool = False
    custom_command: str | None = None
    custom_args: list[str] | None = None
    mcp_servers: list[Any] = field(default_factory=list)
    idempotency_key: str | None = None


def _insert_args(new: NewSession) -> tuple[Any, ...]:
    """The $1..$20 of INSERT and INSERT_WITH_FIRST_EVENT, in column order."""
    return (
        new.session_id,
        new.workspace_id,
        new.name,
        new.cwd,
        new.branch,
        new.provider,
        new.role,
        new.mode_id,
        new.model,
        new.parent_session_id,
        new.specialist_id,
        new.acp_status,
        new.status,
        new.owner_instance_id,
        new.lease_ttl,
        new.auto_approve_permissions,
        new.custom_command,
        new.custom_args,
        new.mcp_servers,
        new.idempotency_key,
    )


async def insert(conn: Connection, new: NewSession) -> None:
    await conn.execute(INSERT, *_insert_args(new))


async def insert_with_first_event(
    conn: Executor, new: NewSession, kind: str, payload: bytes
) -> SessionRow:
    """`insert`, event 1 (`kind`, `payload` with eventId "1") and `get_row`, in one statement."""
    row = await conn.fetchrow(
        INSERT_WITH_FIRST_EVENT,
        *_insert_args(new),
        kind,
        payload.decode(),
    )
    assert row is not None  # an INSERT ... RETURNING without conflict handling
    return _session_row(row)


async def find_idempotent(
    conn: Connection, workspace_id: str, key: str, window: float
) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval(
        FIND_IDEMPOTENT, workspace_id, key, window
    )
    return value


async def rename(conn: Executor, session_id: uuid.UUID, name: str) -> str | None:
    """Returns the workspace id, or None when the session does not exist."""
    value = await conn.fetchval(RENAME, session_id, name)
    return str(value) if value is not None else None


async def set_mode(conn: Executor, session_id: uuid.UUID, mode_id: str) -> None:
    await conn.execute(SET_MODE, session_id, mode_id)


async def set_model(conn: Executor, session_id: uuid.UUID, model: str) -> None:
    await conn.execute(SET_MODEL, session_id, model)


async def set_config_options(
    conn: Executor, session_id: uuid.UUID, options: list[dict[str, Any]]
) -> None:
    """The agent's complete config option list, as it last reported it."""
    await conn.execute(SET_CONFIG_OPTIONS, session_id, options)


async def config_options(
    conn: Executor, session_id: uuid.UUID
) -> list[dict[str, Any]] | None:
    """The stored list; None before the agent reported one (or no such session)."""
    value = await conn.fetchval(CONFIG_OPTIONS, session_id)
    return value if isinstance(value, list) else None


async def set_agent_id(conn: Executor, session_id: uuid.UUID, agent_id: str) -> None:
    await conn.execute(SET_AGENT_ID, session_id, agent_id)


async def release_owner(
    conn: Executor, session_id: uuid.UUID, instance_id: str
) -> None:
    await conn.execute(RELEASE_OWNER, session_id, instance_id)


async def children(
    conn: Executor, session_id: uuid.UUID, workspace_id: str | None = None
) -> list[SessionRef]:
    """Child sessions; with `workspace_id`, only those of that workspace."""
    rows = await conn.fetch(CHILDREN, session_id, workspace_id)
    return [
        SessionRef(session_id=r["session_id"], name=r["name"], status=r["status"])
        for r in rows
    ]


async def ref(
    conn: Executor, session_id: uuid.UUID, workspace_id: str | None = None
) -> SessionRef | None:
    """A session's id, name and status; with `workspace_id`, None unless it is in it."""
    row = await conn.fetchrow(REF, session_id, workspace_id)
    if row is None:
        return None
    return SessionRef(
        session_id=row["session_id"], name=row["name"], status=row["status"]
    )


async def workspace_of(conn: Executor, session_id: uuid.UUID) -> str | None:
    """The workspace of a session (it never changes), or None for an unknown id."""
    workspace: str | None = await conn.fetchval(WORKSPACE_OF, session_id)
    return workspace


# --- query service writes (delete, disconnect) and the list cache's freshness bound ---

DELETE_WITH_LIVE_OWNER = f"""
DELETE FROM sessions WHERE session_id = $1
RETURNING workspace_id,
          {LIVE_OWNER} AS owner_instance_id
"""  # noqa: S608 - built from the constants above, no input

# One statement: read the state before (under the row lock), close, release ownership
# (a new lease generation: the owner, if it still runs, can write nothing more).
CLOSE_AND_RELEASE = f"""
WITH prev AS (
    SELECT session_id, workspace_id, acp_status,
           {EFFECTIVE_STATUS} AS status,
           {LIVE_OWNER} AS owner_instance_id
    FROM sessions WHERE session_id = $1 FOR UPDATE
)
UPDATE sessions s
SET acp_status = 'closed', status = 'closed', acp_error = NULL,
    owner_instance_id = NULL, lease_expires_at = NULL,
    lease_generation = s.lease_generation + 1, updated_at = now()
FROM prev WHERE s.session_id = prev.session_id
RETURNING prev.workspace_id, prev.acp_status, prev.status, prev.owner_instance_id
"""  # noqa: S608 - built from the constants above, no input

# Seconds until the first live lease runs out (a session's effective status flips to closed
# then without anyone writing), and whether any turn is running (lastActivity moves). Every
# cold list runs it. A lease is only ever set with an owner (INSERT, CLAIM_OWNER_FROM) and
# cleared with it, so `owner_instance_id IS NOT NULL` selects nothing more or less; it lets
# Postgres read the owned sessions through their partial indexes instead of scanning the
# whole table (18 ms at 200k sessions, linear in the table).
LIST_FRESHNESS = """
SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 AS lease_left,
       bool_or(status = 'active') AS any_active
FROM sessions
WHERE owner_instance_id IS NOT NULL AND status <> 'closed' AND lease_expires_at >= now()
"""
# The same for a list of one workspace ($1): only its sessions decide how long its list
# may be cached (sessions_workspace_lease_idx), so a turn in another workspace does not.
LIST_FRESHNESS_WORKSPACE = """
SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 AS lease_left,
       bool_or(status = 'active') AS any_active
FROM sessions
WHERE owner_instance_id IS NOT NULL AND workspace_id = $1 AND status <> 'closed'
  AND lease_expires_at >= now()
"""


@dataclass(frozen=True, slots=True)
class DeletedSession:
    workspace_id: str
    owner_instance_id: str | None


@dataclass(frozen=True, slots=True)
class ClosedSession:
    """The state a session had before it was closed by the query service."""

    workspace_id: str
    previous_acp_status: str
    previous_status: str
    owner_instance_id: str | None

    @property
    def was_closed(self) -> bool:
        return self.previous_acp_status == "closed" and self.previous_status == "closed"


async def delete_with_owner(
    conn: Executor, session_id: uuid.UUID
) -> DeletedSession | None:
    """Delete (events cascade); returns the workspace and the owner holding a live lease."""
    row = await conn.fetchrow(DELETE_WITH_LIVE_OWNER, session_id)
    if row is None:
        return None
    return DeletedSession(row["workspace_id"], row["owner_instance_id"])


async def close_and_release(
    conn: Executor, session_id: uuid.UUID
) -> ClosedSession | None:
    """status/acpStatus closed, owner and lease cleared; None when the session does not exist."""
    row = await conn.fetchrow(CLOSE_AND_RELEASE, session_id)
    if row is None:
        return None
    return ClosedSession(
        row["workspace_id"], row["acp_status"], row["status"], row["owner_instance_id"]
    )


async def list_freshness(
    conn: Executor, workspace_id: str | None = None
) -> tuple[float | None, bool]:
    """(seconds until the earliest live lease expires or None, whether a turn is running),
    over the sessions of `workspace_id`, or of every workspace when None."""
    if workspace_id is None:
        row = await conn.fetchrow(LIST_FRESHNESS)
    else:
        row = await conn.fetchrow(LIST_FRESHNESS_WORKSPACE, workspace_id)
    if row is None:
        return None, False
    return row["lease_left"], bool(row["any_active"])


LOCK_IDEMPOTENCY_KEY = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


async def lock_idempotency_key(conn: Connection, workspace_id: str, key: str) -> None:
    """Serialise session/new calls with the same key until the transaction ends."""
    await conn.execute(LOCK_IDEMPOTENCY_KEY, f"session-new:{workspace_id}:{key}")


# --- scale-out: adoption by compare-and-swap, lease renewal that notices a lost lease ---

# Take ownership when nobody holds a live lease, when we hold it, or when the holder is the
# instance the caller found dead ($4): a compare-and-swap on the owner, so of two instances
# adopting at once exactly one wins. Every claim is a new lease generation (the fencing
# token the new owner writes with). Returns the stored (raw) status before the claim and
# the new generation.
CLAIM_OWNER_FROM = """
WITH prev AS (SELECT session_id, status FROM sessions WHERE session_id = $1 FOR UPDATE)
UPDATE sessions s
SET owner_instance_id = $2, lease_expires_at = now() + make_interval(secs => $3),
    lease_generation = s.lease_generation + 1
FROM prev
WHERE s.session_id = prev.session_id
  AND (s.owner_instance_id IS NULL OR s.owner_instance_id = $2
       OR ($4::text IS NOT NULL AND s.owner_instance_id = $4)
       OR s.lease_expires_at IS NULL OR s.lease_expires_at < now())
RETURNING prev.status, s.lease_generation
"""

# Renew only the leases still held at the generation we claimed ($3 ids, $4 generations).
RENEW_LEASES_OWNED = """
UPDATE sessions s SET lease_expires_at = now() + make_interval(secs => $2)
FROM unnest($3::uuid[], $4::bigint[]) AS held(session_id, generation)
WHERE s.session_id = held.session_id AND s.lease_generation = held.generation
  AND s.owner_instance_id = $1
RETURNING s.session_id
"""

# Leases that ran out while still naming an owner: that owner died or stalls (the sweeper's).
EXPIRED_LEASES = """
SELECT session_id::text AS session_id, owner_instance_id, lease_generation
FROM sessions
WHERE owner_instance_id IS NOT NULL AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
"""

# A restarted instance (same INSTANCE_ID) runs no agent yet: what the row says it owns is stale.
OWNED_BY = """
SELECT session_id::text AS session_id, owner_instance_id, lease_generation
FROM sessions WHERE owner_instance_id = $1
"""

# Close a session whose owner is gone, compare-and-set on (owner, generation): of several
# instances that noticed, one does it. Status and acp_status as an owner that stopped would
# leave them (an error stays), the lease released at a new generation, so the old owner
# (if it still runs) is fenced. $4: only when the lease ran out (the sweeper), else any.
CLOSE_ORPHAN = """
WITH prev AS (
    SELECT session_id, workspace_id, acp_status FROM sessions
    WHERE session_id = $1 FOR UPDATE
)
UPDATE sessions s
SET owner_instance_id = NULL, lease_expires_at = NULL,
    lease_generation = s.lease_generation + 1,
    acp_status = CASE WHEN s.acp_status IN ('connecting', 'ready') THEN 'closed'
                      ELSE s.acp_status END,
    status = 'closed', updated_at = now()
FROM prev
WHERE s.session_id = prev.session_id AND s.owner_instance_id = $2
  AND s.lease_generation = $3
  AND (NOT $4::boolean OR s.lease_expires_at < now())
RETURNING prev.workspace_id, prev.acp_status AS previous_acp_status, s.acp_status,
          s.lease_generation
"""

HOLDS_GENERATION = "SELECT lease_generation = $2 FROM sessions WHERE session_id = $1"

# A workspace's cap on running turns: the cap, read without a lock (NULL: no cap), then
# under the workspace row's lock (taken by its own statement, so that the count after it
# sees every turn committed before), the workspace's other sessions with a running turn and
# a live lease are counted and this one marked active when there is room, at our lease
# generation ($4). Every instance counts alike; a dead owner's turn stops counting with its
# lease.
TURN_CAP = "SELECT max_concurrent_turns FROM workspaces WHERE id = $1"
LOCK_TURN_CAP = "SELECT max_concurrent_turns FROM workspaces WHERE id = $1 FOR UPDATE"
CLAIM_TURN_SLOT = """
WITH running AS (
    SELECT count(*) AS n FROM sessions
    WHERE workspace_id = $2 AND status = 'active' AND session_id <> $1
      AND lease_expires_at > now()
)
UPDATE sessions s SET status = 'active', updated_at = now()
FROM running
WHERE s.session_id = $1 AND running.n < $3
  AND ($4::bigint IS NULL OR s.lease_generation = $4)
RETURNING s.session_id
"""

# a claimed slot no turn started on: status idle again (no event, like the claim)
RELEASE_TURN_SLOT = """
UPDATE sessions SET status = 'idle', updated_at = now()
WHERE session_id = $1 AND status = 'active'
  AND ($2::bigint IS NULL OR lease_generation = $2)
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A successful claim: the raw status the previous owner left, our generation."""

    previous_status: str
    generation: int


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease as the row names it: whose it is and at which generation."""

    session_id: str
    owner_instance_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class ClosedOrphan:
    workspace_id: str
    previous_acp_status: str
    acp_status: str
    generation: int


async def claim_owner_from(
    conn: Executor,
    session_id: uuid.UUID,
    instance_id: str,
    ttl: float,
    dead_owner: str | None = None,
) -> Claim | None:
    """Claim (see CLAIM_OWNER_FROM); None when another instance holds a live lease."""
    row = await conn.fetchrow(
        CLAIM_OWNER_FROM, session_id, instance_id, ttl, dead_owner
    )
    if row is None:
        return None
    return Claim(str(row["status"]), int(row["lease_generation"]))


async def renew_leases_owned(
    conn: Executor,
    instance_id: str,
    ttl: float,
    held: Sequence[tuple[uuid.UUID, int]],
) -> set[uuid.UUID]:
    """Renew (session id, generation) leases; the ids still ours (the others were taken)."""
    rows = await conn.fetch(
        RENEW_LEASES_OWNED,
        instance_id,
        ttl,
        [session_id for session_id, _ in held],
        [generation for _, generation in held],
    )
    return {r["session_id"] for r in rows}


def _held(rows: Sequence[asyncpg.Record]) -> list[HeldLease]:
    return [
        HeldLease(r["session_id"], r["owner_instance_id"], r["lease_generation"])
        for r in rows
    ]


async def expired_leases(conn: Executor, limit: int) -> list[HeldLease]:
    """Leases past their expiry that still name an owner, oldest first."""
    return _held(await conn.fetch(EXPIRED_LEASES, limit))


async def owned_by(conn: Executor, instance_id: str) -> list[HeldLease]:
    return _held(await conn.fetch(OWNED_BY, instance_id))


async def close_orphan(
    conn: Executor, lease: HeldLease, *, expired_only: bool
) -> ClosedOrphan | None:
    """Close and release (see CLOSE_ORPHAN); None when the lease changed meanwhile."""
    row = await conn.fetchrow(
        CLOSE_ORPHAN,
        uuid.UUID(lease.session_id),
        lease.owner_instance_id,
        lease.generation,
        expired_only,
    )
    if row is None:
        return None
    return ClosedOrphan(
        row["workspace_id"],
        row["previous_acp_status"],
        row["acp_status"],
        row["lease_generation"],
    )


async def holds_generation(
    conn: Executor, session_id: uuid.UUID, generation: int
) -> bool:
    """Whether `generation` is still the session's current lease generation."""
    return bool(await conn.fetchval(HOLDS_GENERATION, session_id, generation))


@dataclass(frozen=True, slots=True)
class TurnSlot:
    """Whether a turn may start; `cap`: the workspace's maxConcurrentTurns (None: no cap,
    and nothing was written)."""

    granted: bool
    cap: int | None = None


async def claim_turn_slot(
    pool: Pool, session_id: uuid.UUID, workspace_id: str, generation: int | None
) -> TurnSlot:
    """Under a workspace cap: mark the session active when its other running turns leave
    room (see CLAIM_TURN_SLOT)."""
    if await pool.fetchval(TURN_CAP, workspace_id) is None:
        return TurnSlot(True)
    async with pool.acquire() as conn, conn.transaction():
        cap = await conn.fetchval(LOCK_TURN_CAP, workspace_id)
        if cap is None:
            return TurnSlot(True)
        granted = await conn.fetchval(
            CLAIM_TURN_SLOT, session_id, workspace_id, cap, generation
        )
    return TurnSlot(granted is not None, int(cap))


async def release_turn_slot(
    pool: Pool, session_id: uuid.UUID, generation: int | None
) -> None:
    """Undo `claim_turn_slot` when the turn it was for never started."""
    await pool.execute(RELEASE_TURN_SLOT, session_id, generation)
