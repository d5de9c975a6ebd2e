"""Cleanup contexts for Postgres (after migrations) and Redis, in that order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.common.keys import PG_POOL, REDIS, SETTINGS
from shared.db.connect import create_pool
from shared.db.migrate import migrate
from shared.redisconn import create_redis
from shared.retry import Backoff

logger = logging.getLogger(__name__)

STARTUP_ATTEMPTS = 20
# asyncpg's Pool.close waits for every connection to be given back: one held by a task
# that never ends would hold the shutdown forever. After this, the pool is terminated.
POOL_CLOSE_WAIT = 10.0


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    """Migrate, then open the pool; retries briefly so a stack can start in any order."""
    settings = app[SETTINGS]
    backoff = Backoff(0.25, 2.0)
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            await migrate(settings.database_url)
            break
        except (OSError, ConnectionError) as err:
            if attempt == STARTUP_ATTEMPTS:
                raise
            logger.warning("postgres not reachable yet (%s), retrying", err)
            await backoff.wait()
    app[PG_POOL] = await create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
    )
    yield
    pool = app[PG_POOL]
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_WAIT)
    except TimeoutError:
        logger.error(
            "postgres pool: connections still held after %.1f s; terminated",
            POOL_CLOSE_WAIT,
        )
        pool.terminate()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = create_redis(app[SETTINGS].redis_url)
    yield
    await app[REDIS].aclose()
