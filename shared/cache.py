"""The warm session-list cache: Redis-backed, never the source of truth.

Lists are cached as the exact response bytes under a hash keyed by the query. Every writer
of session data calls `invalidate_sessions`, which bumps a generation counter, drops the
hash and announces it on the invalidations channel (for in-process copies). A reader that
missed stores its Postgres result only if the generation did not move while it read, so a
write that races a fill can never leave a stale list behind.
"""

from __future__ import annotations

import logging

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError

from shared.channels import Channels
from shared.redisconn import Redis, is_cluster

logger = logging.getLogger(__name__)

LIST_TTL_SECONDS = 300


def queue_invalidation(pipe: Pipeline | ClusterPipeline, channels: Channels) -> None:
    """The commands of `invalidate_sessions`, added to a caller's pipeline."""
    _ = pipe.incr(channels.cache_sessions_generation())
    _ = pipe.delete(channels.cache_sessions_lists())
    _ = pipe.publish(channels.cache_invalidations, b"sessions")


# On a Redis Cluster a MULTI cannot carry PUBLISH (it has no key to route by), so the same
# commands run as one script on the master of the `{sessions}` slot: KEYS[1] generation,
# KEYS[2] lists hash, KEYS[3] the sharded invalidation channel (same slot); ARGV
# channel/message pairs published in order after it. The SPUBLISH is what the in-process
# caches listen to (SSUBSCRIBE on that master, listcache.py): it is written to their
# sockets while this script runs, before its reply, whereas a plain PUBLISH reaches
# subscribers on other nodes over the cluster bus, possibly after the reply. The plain
# PUBLISH stays for any other listener of `cache_invalidations`.
_INVALIDATE = """
redis.call('INCR', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('SPUBLISH', KEYS[3], 'sessions')
for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return 1
"""


async def invalidate_sessions(
    redis: Redis, channels: Channels, *announce: tuple[str, bytes]
) -> None:
    """Drop every cached list, then publish `announce` (channel, message) pairs.

    Raises RedisError when Redis is unreachable.
    """
    if is_cluster(redis):
        args: list[str | bytes] = [channels.cache_invalidations, b"sessions"]
        for channel, message in announce:
            args += [channel, message]
        # A GET in the same packet before the script: this connection then has a reply
        # queued before the SPUBLISH queues the subscribers' message, and Redis writes the
        # clients it queued later first, so the subscribers get theirs before our reply
        # (as the MULTI's early replies do below). The script alone loses that race.
        async with redis.pipeline(transaction=False) as pipe:
            _ = pipe.get(channels.cache_sessions_generation())
            _ = pipe.eval(
                _INVALIDATE,
                3,
                channels.cache_sessions_generation(),
                channels.cache_sessions_lists(),
                channels.cache_invalidations_sharded,
                *args,
            )
            await pipe.execute()
        return
    async with redis.pipeline(transaction=True) as pipe:
        queue_invalidation(pipe, channels)
        for channel, message in announce:
            _ = pipe.publish(channel, message)
        await pipe.execute()


async def try_invalidate_sessions(redis: Redis, channels: Channels) -> bool:
    try:
        await invalidate_sessions(redis, channels)
    except (RedisError, OSError) as err:
        logger.warning("cache invalidation failed: %s", err)
        return False
    return True


# KEYS[1] generation, KEYS[2] lists hash; ARGV[1] generation seen before the read,
# ARGV[2] field, ARGV[3] body, ARGV[4] ttl, ARGV[5] until.
# Entries with a freshness bound: the body plus `<field>#until` (epoch ms). Some answers
# change without a writer (a lease runs out, lastActivity moves during a turn); the bound
# makes such an entry a miss once it may be stale. Readers that find no `#until` field
# treat the entry as valid until the next invalidation.
_STORE_IF_CURRENT_UNTIL = """
local gen = redis.call('GET', KEYS[1]) or '0'
if gen == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3], ARGV[2] .. '#until', ARGV[5])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  return 1
end
return 0
"""


async def read_list_entry(
    redis: Redis, channels: Channels, query_key: str
) -> tuple[bytes | None, int | None, str]:
    """(body, until epoch ms, current generation) in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        _ = pipe.hmget(
            channels.cache_sessions_lists(), [query_key, f"{query_key}#until"]
        )
        _ = pipe.get(channels.cache_sessions_generation())
        (body, until), gen = await pipe.execute()
    body_bytes = body if isinstance(body, bytes) else None
    until_ms = int(until) if until is not None else None
    if gen is None:
        gen_str = "0"
    else:
        gen_str = gen.decode() if isinstance(gen, bytes) else str(gen)
    return body_bytes, until_ms, gen_str


async def store_list_until(
    redis: Redis,
    channels: Channels,
    query_key: str,
    seen_generation: str,
    body: bytes,
    until_ms: int,
) -> bool:
    """Store a list body with a freshness bound, only if the generation is unchanged."""
    stored = await redis.eval(
        _STORE_IF_CURRENT_UNTIL,
        2,
        channels.cache_sessions_generation(),
        channels.cache_sessions_lists(),
        seen_generation,
        query_key,
        body,
        LIST_TTL_SECONDS,
        until_ms,
    )
    return bool(stored)
