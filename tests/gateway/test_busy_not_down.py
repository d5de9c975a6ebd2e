"""A store that waits its turn while other sessions' stores succeed is waited for; one that
waits while nothing stores is an outage (`EventWriter.flush_unless_down`).

Found at 1,000 sessions streaming at once on one gateway: prompts waited more than five
seconds for a pooled connection and were answered "Postgres unavailable" while Postgres was
storing every other session's events. Here one session's store is held on a row lock taken
from another connection (Postgres is up, that store just waits), with and without another
writer of the same process storing meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid

from services.gateway.eventlog import EventBuffer, EventWriter
from tests.gateway.eventlog_support import chunk, new_session

DOWN_AFTER = 1.0
# the other writer stores one event this often: far below DOWN_AFTER, so a loaded machine
# still sees a store succeed within every DOWN_AFTER window
CADENCE = 0.05
LOCK = "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE"


async def _stored(pool, sid: uuid.UUID) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM session_events WHERE session_id = $1", sid
    )


async def test_a_busy_postgres_is_waited_for(pool, redis, channels, workspace_id):
    held, other = (
        await new_session(pool, workspace_id),
        await new_session(pool, workspace_id),
    )
    buffer = EventBuffer(1 << 30)
    waiting = EventWriter(
        pool, redis, channels, held, workspace_id=workspace_id, buffer=buffer
    )
    storing = EventWriter(
        pool, redis, channels, other, workspace_id=workspace_id, buffer=buffer
    )
    lock = await pool.acquire()
    tx = lock.transaction()
    await tx.start()
    locked = True
    try:
        # the held session's store bumps its row's counter: it waits for this lock
        await lock.execute(LOCK, held)
        position = waiting.append(chunk(0))
        flushed = asyncio.create_task(waiting.flush_unless_down(DOWN_AFTER, position))
        # the other session stores one event every CADENCE until the lock has been held
        # through at least three DOWN_AFTER windows' worth of its stores
        needed = int(3 * DOWN_AFTER / CADENCE)
        for i in range(needed):
            storing.append(chunk(i))
            await asyncio.sleep(CADENCE)
            assert not flushed.done(), "gave up while other stores succeeded"
        await storing.flush()
        assert await _stored(pool, other) == needed
        assert await _stored(pool, held) == 0  # still waiting on the lock
        await tx.rollback()
        locked = False
        async with asyncio.timeout(30):
            await flushed  # stored once the lock went: no TimeoutError
        assert await _stored(pool, held) == 1
    finally:
        if locked:
            await tx.rollback()
        await pool.release(lock)
        await waiting.close()
        await storing.close()


async def test_nothing_storing_is_an_outage(pool, redis, channels, workspace_id):
    held = await new_session(pool, workspace_id)
    waiting = EventWriter(pool, redis, channels, held, workspace_id=workspace_id)
    lock = await pool.acquire()
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute(LOCK, held)
        position = waiting.append(chunk(0))
        flushed = asyncio.create_task(waiting.flush_unless_down(DOWN_AFTER, position))
        # a guard, not a timing: the wait itself gives up after DOWN_AFTER
        done, _ = await asyncio.wait({flushed}, timeout=30)
        assert flushed in done
        assert isinstance(flushed.exception(), TimeoutError)
        assert await _stored(pool, held) == 0
    finally:
        await tx.rollback()
        await pool.release(lock)
        await waiting.close()
    # the writer kept the event: stored once the lock went
    assert await _stored(pool, held) == 1
