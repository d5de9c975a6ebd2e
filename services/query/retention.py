"""Event retention (EVENT_RETENTION_DAYS): a periodic pass that deletes the event logs of
sessions closed longer than the window.

Every query instance runs the task; a session-level advisory lock lets one pass run at a
time across instances, the others skip that round. A pass walks the expired sessions in id
order and deletes in statements of at most `batch` rows, each its own short transaction
(row locks on those rows only, never a table lock), with a pause between them so the
write path keeps its share of Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from services.common.keys import PG_POOL, SETTINGS
from shared.db import retention as db
from shared.db.connect import Connection, Pool

logger = logging.getLogger(__name__)

BATCH = 1000  # rows per DELETE statement
PAGE = 500  # expired sessions looked at per query
PAUSE = 0.01  # seconds between two deletes
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass
class PassResult:
    ran: bool  # False: another instance held the lock
    sessions: int = 0
    events: int = 0
    search_documents: int = 0
    statements: int = 0
    largest_delete: int = 0
    longest_statement: float = 0.0  # seconds: the longest any delete held its rows


async def run_pass(
    pool: Pool,
    days: float,
    *,
    batch: int = BATCH,
    pause: float = PAUSE,
    now: datetime | None = None,
) -> PassResult:
    """One pass over the sessions closed more than `days` days ago."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    async with pool.acquire() as conn:
        try:
            if not await db.try_lock(conn):
                return PassResult(ran=False)
            try:
                return await _expire(conn, cutoff, batch, pause)
            finally:
                await db.unlock(conn)
        except BaseException:
            # The pool does not reset connections (shared.db.connect): a lock left on a
            # pooled connection would stop every later pass of every instance. After a
            # failure anywhere here the lock's state is unknown, so the connection goes.
            conn.terminate()
            raise


async def _expire(
    conn: Connection, cutoff: datetime, batch: int, pause: float
) -> PassResult:
    """The pass itself, under the lock."""
    result = PassResult(ran=True)
    after = uuid.UUID(int=0)
    while window := await db.expired_window(conn, after, cutoff, PAGE):
        for session_id, holds_rows in window:
            if not holds_rows:
                continue
            events = await _drain(
                conn, session_id, cutoff, batch, pause, result, db.delete_events
            )
            docs = await _drain(
                conn, session_id, cutoff, batch, pause, result, db.delete_search
            )
            result.events += events
            result.search_documents += docs
            if events or docs:
                result.sessions += 1
                logger.info(
                    "retention: deleted %d events of session %s",
                    events,
                    session_id,
                )
        after = window[-1][0]
    return result


async def _drain(
    conn: Connection,
    session_id: uuid.UUID,
    cutoff: datetime,
    batch: int,
    pause: float,
    result: PassResult,
    delete: db.DeleteFn,
) -> int:
    """Bounded deletes until the session has nothing (or is no longer expired)."""
    total = 0
    while True:
        began = time.monotonic()
        n = await delete(conn, session_id, cutoff, batch)
        result.longest_statement = max(
            result.longest_statement, time.monotonic() - began
        )
        result.statements += 1
        result.largest_delete = max(result.largest_delete, n)
        total += n
        if n < batch:
            return total
        await asyncio.sleep(pause)


async def _loop(app: web.Application, days: float, interval: float) -> None:
    while True:
        try:
            result = await run_pass(app[PG_POOL], days)
            if result.ran and result.sessions:
                logger.info(
                    "retention pass: %d sessions, %d events, %d search documents",
                    result.sessions,
                    result.events,
                    result.search_documents,
                )
        except _PG_ERRORS as err:
            logger.warning("retention pass failed, retrying next round: %s", err)
        await asyncio.sleep(interval)


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the periodic pass for the app's life when EVENT_RETENTION_DAYS is set."""
    settings = app[SETTINGS]
    days = settings.event_retention_days
    if days is None:
        yield
        return
    task = asyncio.create_task(
        _loop(app, days, settings.event_retention_interval), name="event-retention"
    )
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
