"""An expired auth answer is read from Postgres once, however many requests want it.

Before, every request that arrived while the "is auth on?" answer (or a token's scope) was
being re-read sent its own query; under load they queued for the pool together, every
AUTH_CACHE_TTL seconds. The pool here is the real one, counted on the way through.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.common.authstate import TokenStore, Unknown
from shared.db import tokens as tokens_db
from shared.db.connect import create_pool

CALLERS = 50


class CountingPool:
    """The real pool, counting the queries that pass through it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.queries = 0

    async def fetchval(self, query: str, *args: Any) -> Any:
        self.queries += 1
        await asyncio.sleep(0.05)  # a query slow enough for the callers to overlap
        return await self.pool.fetchval(query, *args)


async def test_expired_answers_are_read_once_for_all_callers(
    private_database_url: str,
) -> None:
    pool = await create_pool(private_database_url, min_size=1, max_size=4)
    try:
        counting = CountingPool(pool)
        store = TokenStore({}, counting, 0.0)  # type: ignore[arg-type]  # ttl 0: always expired

        answers = await asyncio.gather(*(store.enabled() for _ in range(CALLERS)))
        assert answers == [False] * CALLERS  # no token was ever created
        assert counting.queries == 1

        token = tokens_db.new_token()
        await tokens_db.create(pool, token, ["ws-a"])
        counting.queries = 0
        scopes = await asyncio.gather(*(store.lookup(token) for _ in range(CALLERS)))
        assert scopes == [frozenset({"ws-a"})] * CALLERS
        assert counting.queries == 1
        # an unknown token: one read too, and every caller hears it is unknown
        counting.queries = 0
        unknown = await asyncio.gather(
            *(store.lookup("routa_nope") for _ in range(CALLERS))
        )
        assert all(isinstance(s, Unknown) for s in unknown)
        assert counting.queries == 1
        # the calls are over: the next caller reads again (the cache rules staleness)
        assert await store.enabled() is True
        assert counting.queries == 2
    finally:
        await pool.close()
