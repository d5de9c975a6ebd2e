"""SQL for `webhooks` and their outbox `webhook_deliveries`.

Deliveries are inserted by triggers (migration 0009) in the transaction of the event or
session row that causes them; this module lists them and moves them through their states.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.connect import Executor
from shared.jsonutil import iso
from shared.models.webhook import Webhook, WebhookDelivery

INSERT = """
INSERT INTO webhooks (id, workspace_id, url, events, secret) VALUES ($1, $2, $3, $4, $5)
RETURNING id::text, url, events, created_at
"""

LIST = """
SELECT id::text, url, events, created_at FROM webhooks
WHERE workspace_id = $1 ORDER BY created_at, id
"""

EXISTS = "SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = $1 AND workspace_id = $2)"

DELETE = "DELETE FROM webhooks WHERE id = $1 AND workspace_id = $2 RETURNING id"

DELIVERIES = """
SELECT id::text, event, status, attempts, last_status_code, last_error,
       CASE WHEN status IN ('pending', 'failed') THEN next_attempt_at END AS next_attempt_at,
       created_at
FROM webhook_deliveries WHERE webhook_id = $1
ORDER BY created_at DESC, id LIMIT $2
"""

# Claim up to $1 due deliveries: count the attempt and move next_attempt_at $2 seconds on,
# so no other worker takes them while this one posts; SKIP LOCKED lets workers claim
# side by side without waiting on each other's rows. A worker that dies leaves its claim
# to fall due again after $2 seconds.
CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1,
    first_attempt_at = COALESCE(d.first_attempt_at, now()),
    next_attempt_at = now() + make_interval(secs => $2)
FROM due, webhooks w
WHERE d.id = due.id AND w.id = d.webhook_id
RETURNING d.id::text AS id, d.body, d.attempts, d.first_attempt_at, now() AS claimed_at,
          w.url, w.secret
"""

# The outcome of attempt $2; a claim that ran out and was taken again (attempts moved on)
# changes nothing, so a late worker never overwrites a newer attempt.
RECORD = """
UPDATE webhook_deliveries
SET status = $3, last_status_code = $4, last_error = $5, next_attempt_at = $6,
    finished_at = CASE WHEN $3 IN ('delivered', 'dead') THEN now() END
WHERE id = $1 AND attempts = $2 AND status IN ('pending', 'failed')
"""

# An attempt abandoned before it finished (shutdown): due again at once, not counted.
RELEASE = """
UPDATE webhook_deliveries
SET attempts = attempts - 1, next_attempt_at = now(),
    first_attempt_at = CASE WHEN attempts = 1 THEN NULL ELSE first_attempt_at END
WHERE id = $1 AND attempts = $2 AND status IN ('pending', 'failed')
"""

PURGE = """
DELETE FROM webhook_deliveries
WHERE finished_at < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """One claimed attempt: what to send where, and the clock the retry plan starts from."""

    id: str
    url: str
    secret: str
    body: str
    attempt: int
    first_attempt_at: datetime
    claimed_at: datetime


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=list(row["events"]),
        created_at=iso(row["created_at"]),
    )


async def create(
    conn: Executor,
    workspace_id: str,
    url: str,
    events: Sequence[str],
    secret: str,
) -> Webhook:
    row = await conn.fetchrow(
        INSERT, uuid.uuid4(), workspace_id, url, list(events), secret
    )
    assert row is not None
    return _webhook(row)


async def list_webhooks(conn: Executor, workspace_id: str) -> list[Webhook]:
    """Oldest first; never the secrets."""
    return [_webhook(r) for r in await conn.fetch(LIST, workspace_id)]


async def exists(conn: Executor, workspace_id: str, webhook_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval(EXISTS, webhook_id, workspace_id))


async def delete(conn: Executor, workspace_id: str, webhook_id: uuid.UUID) -> bool:
    """Its deliveries go with it (ON DELETE CASCADE)."""
    return await conn.fetchval(DELETE, webhook_id, workspace_id) is not None


async def deliveries(
    conn: Executor, webhook_id: uuid.UUID, limit: int
) -> list[WebhookDelivery]:
    """Newest first."""
    return [
        WebhookDelivery(
            id=r["id"],
            event=r["event"],
            status=r["status"],
            attempts=r["attempts"],
            last_status_code=r["last_status_code"],
            last_error=r["last_error"],
            next_attempt_at=iso(r["next_attempt_at"]) if r["next_attempt_at"] else None,
            created_at=iso(r["created_at"]),
        )
        for r in await conn.fetch(DELIVERIES, webhook_id, limit)
    ]


async def claim(conn: Executor, limit: int, claim_seconds: float) -> list[Claim]:
    rows = await conn.fetch(CLAIM, limit, claim_seconds)
    return [
        Claim(
            id=r["id"],
            url=r["url"],
            secret=r["secret"],
            body=r["body"],
            attempt=r["attempts"],
            first_attempt_at=r["first_attempt_at"],
            claimed_at=r["claimed_at"],
        )
        for r in rows
    ]


async def record(
    conn: Executor,
    delivery_id: str,
    attempt: int,
    status: str,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
) -> bool:
    """False when the attempt was no longer this worker's to record."""
    result = await conn.execute(
        RECORD,
        uuid.UUID(delivery_id),
        attempt,
        status,
        status_code,
        error,
        next_attempt_at,
    )
    return result.endswith(" 1")


async def release(conn: Executor, delivery_id: str, attempt: int) -> None:
    await conn.execute(RELEASE, uuid.UUID(delivery_id), attempt)


async def purge(conn: Executor, older_than_seconds: float) -> int:
    """Delete deliveries finished (delivered or dead) longer ago than that."""
    result = await conn.execute(PURGE, older_than_seconds)
    return int(result.rsplit(" ", 1)[-1])
