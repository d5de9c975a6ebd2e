"""The warm session-list cache of this process: Redis reads with a deadline, a breaker, and
re-invalidation after a write that could not reach Redis.

Redis is never required: a slow or absent Redis turns every read into a Postgres read and
every write into a logged warning, never into an error or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.common.keys import CHANNELS, REDIS
from shared import cache, lifecycle
from shared.channels import Channels
from shared.lifecycle import LifecycleType
from shared.redisconn import Redis

logger = logging.getLogger(__name__)

REDIS_OP_TIMEOUT = 0.5  # a hung Redis must not hang a list
BREAKER_SECONDS = 1.0  # after a failure, go straight to Postgres for this long
RETRY_INTERVAL = 0.5  # pending invalidations are retried this often

_REDIS_ERRORS = (RedisError, OSError, TimeoutError, ValueError)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What Redis held for one query: the body (maybe expired) and the generation seen."""

    body: bytes | None = None
    fresh: bool = False
    generation: str | None = None  # None: Redis not usable, do not store


class ListCache:
    """Per-process view of the shared cache; the source of truth stays Postgres."""

    def __init__(self, redis: Redis, channels: Channels) -> None:
        self._redis = redis
        self._channels = channels
        self._down_until = 0.0
        self.pending_invalidation = False
        self._wake = asyncio.Event()

    def _usable(self) -> bool:
        return not self.pending_invalidation and self.redis_reachable

    @property
    def redis_reachable(self) -> bool:
        """False for a moment after a Redis failure: writers then skip Redis at once."""
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, err: BaseException) -> None:
        self._down_until = time.monotonic() + BREAKER_SECONDS
        logger.warning("redis %s failed: %r", what, err)

    async def lookup(self, query_key: str) -> Lookup:
        """Never raises; a Redis problem is a miss that must not be stored."""
        if not self._usable():
            return Lookup()
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT):
                body, until_ms, gen = await cache.read_list_entry(
                    self._redis, self._channels, query_key
                )
        except _REDIS_ERRORS as err:
            self._failed("cache read", err)
            return Lookup()
        fresh = body is not None and (until_ms is None or until_ms > _now_ms())
        return Lookup(body, fresh, gen)

    async def store(
        self, query_key: str, generation: str, body: bytes, ttl: float
    ) -> None:
        """Keep the body if no write happened since `generation` was read; never raises."""
        if not self._usable():
            return
        until_ms = _now_ms() + int(ttl * 1000)
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT):
                await cache.store_list_until(
                    self._redis, self._channels, query_key, generation, body, until_ms
                )
        except _REDIS_ERRORS as err:
            self._failed("cache store", err)

    async def session_changed(
        self,
        type_: LifecycleType,
        session_id: str,
        workspace_id: str,
        changes: dict[str, Any],
    ) -> None:
        """Invalidate and announce a change, bounded in time; called before answering a write.

        When Redis cannot be reached, cached lists may be stale once it is back: this process
        stops reading them and keeps retrying the invalidation until it succeeds.
        """
        if self.redis_reachable and await self._announce(
            type_, session_id, workspace_id, changes
        ):
            return
        self.pending_invalidation = True
        self._wake.set()

    async def _announce(
        self,
        type_: LifecycleType,
        session_id: str,
        workspace_id: str,
        changes: dict[str, Any],
    ) -> bool:
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT * 2):
                if await lifecycle.session_changed(
                    self._redis,
                    self._channels,
                    type_,
                    session_id,
                    workspace_id,
                    changes,
                ):
                    return True
        except TimeoutError as err:
            self._failed("lifecycle publish", err)
            return False
        self._down_until = time.monotonic() + BREAKER_SECONDS
        return False

    async def run_retries(self) -> None:
        """Owned by the app: retries a pending invalidation until Redis takes it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending_invalidation:
                try:
                    async with asyncio.timeout(REDIS_OP_TIMEOUT):
                        await cache.invalidate_sessions(self._redis, self._channels)
                except _REDIS_ERRORS:
                    await asyncio.sleep(RETRY_INTERVAL)
                else:
                    self.pending_invalidation = False
                    self._down_until = 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)


LIST_CACHE = web.AppKey("session_list_cache", ListCache)


async def list_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the Redis context: the cache wraps its client and owns the retry task."""
    app[LIST_CACHE] = list_cache = ListCache(app[REDIS], app[CHANNELS])
    task = asyncio.create_task(list_cache.run_retries(), name="list-cache-retries")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
