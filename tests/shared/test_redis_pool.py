"""The process's Redis client waits for a pooled connection in a burst instead of failing."""

from __future__ import annotations

import asyncio
import uuid

from shared.redisconn import MAX_CONNECTIONS, create_redis


async def test_a_burst_beyond_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    # Each BLPOP holds its connection until it times out, so every one of these
    # commands needs a connection of its own at the same time: twice the pool.
    redis = create_redis(redis_url)
    key = f"test-pool-{uuid.uuid4().hex}"
    try:
        burst = 2 * MAX_CONNECTIONS
        results = await asyncio.gather(
            *(redis.blpop([f"{key}:{i}"], timeout=0.2) for i in range(burst)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        assert results == [None] * burst
        assert await redis.ping()
    finally:
        await redis.aclose()
