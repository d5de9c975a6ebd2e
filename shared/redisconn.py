"""Creating Redis clients with the timeouts every process uses."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

Redis = aioredis.Redis


def create_redis(redis_url: str) -> Redis:
    """A pooled client that fails fast when Redis is down instead of hanging a request."""
    return aioredis.from_url(
        redis_url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=10,
        # redis-py's own one retry of a command, jittered like shared/retry.py
        retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=1),
        max_connections=64,
    )
