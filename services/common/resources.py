"""Cleanup contexts for Postgres (after migrations) and Redis, in that order."""

from __future__ import annotations

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
    await app[PG_POOL].close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = create_redis(app[SETTINGS].redis_url)
    yield
    await app[REDIS].aclose()
