"""The warm session-list cache: Redis-backed, never the source of truth.

Lists are cached as the exact response bytes under a hash keyed by the query, one hash per
scope: a workspace (lists with `workspaceId`), or every workspace (lists without it). Every
writer of session data calls `invalidate_sessions` with the session's workspace, which bumps
the generation counters of that workspace and of the unscoped lists, drops their hashes and
announces the workspace on the invalidations channel (for in-process copies). Lists of other
workspaces stay cached. A reader that missed stores its Postgres result only if its scope's
generation did not move while it read, so a write that races a fill can never leave a stale
list behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set

from redis.exceptions import RedisError

from shared.channels import Channels
from shared.redisconn import Redis, is_cluster

logger = logging.getLogger(__name__)

LIST_TTL_SECONDS = 300
# A workspace's generation outlives its last write by this much, so that the counters of
# workspaces nobody writes do not pile up. A fill compares the generation it read with the
# current one; it could only be fooled by a counter that expired and climbed back to the same
# value while it ran, and no fill runs for a day.
GENERATION_TTL_SECONDS = 86_400


def _scopes(workspace_ids: Set[str]) -> list[str | None]:
    """What a write to sessions of `workspace_ids` changes: each of them and the unscoped."""
    if not workspace_ids:
        raise ValueError("an invalidation names at least one workspace")
    return [*sorted(workspace_ids), None]


# The invalidation, as one script on one server or on the master of the `{sessions}` slot of
# a Redis Cluster. KEYS: a (generation, lists hash) pair per scope, then on a cluster the
# sharded invalidation channel. ARGV[1] the generations' ttl; ARGV[2] a number p of
# (channel, message) pairs published first (a new session's first event), then those pairs;
# then the plain invalidation channel, a number m of invalidation messages and those
# messages; then (channel, message) pairs published last (the lifecycle message).
# On a cluster a MULTI could not carry PUBLISH (it has no key to route by), and every
# generation, lists hash and the sharded channel carry the `{sessions}` hash tag, so the
# script touches one slot whatever the workspaces. The SPUBLISH is what a cluster's
# in-process caches listen to (SSUBSCRIBE on that master, listcache.py): it is written to
# their sockets while this script runs, before its reply, whereas a plain PUBLISH reaches
# subscribers on other nodes over the cluster bus, possibly after the reply. The plain
# PUBLISH is what they listen to on one server, and stays on a cluster for any other
# listener. One script instead of a MULTI of 3 commands per scope plus the publishes:
# session/new sent eleven commands and read eleven replies for this.
_INVALIDATE = """
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 1, #KEYS - 1, 2 do
  redis.call('INCR', KEYS[k])
  redis.call('EXPIRE', KEYS[k], tonumber(ARGV[1]))
  redis.call('DEL', KEYS[k + 1])
end
local channel, m = ARGV[i], tonumber(ARGV[i + 1])
i = i + 2
if #KEYS % 2 == 1 then
  for j = i, i + m - 1 do redis.call('SPUBLISH', KEYS[#KEYS], ARGV[j]) end
end
for j = i, i + m - 1 do redis.call('PUBLISH', channel, ARGV[j]) end
i = i + m
while i < #ARGV do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
"""

Announce = tuple[str, bytes]


async def invalidate_sessions(
    redis: Redis,
    channels: Channels,
    workspace_ids: Set[str],
    *announce: Announce,
    first: Sequence[Announce] = (),
) -> None:
    """Drop the cached lists of `workspace_ids` and the unscoped ones, then publish
    `announce` (channel, message) pairs; `first` pairs are published before all of it.

    One round trip (two on a cluster). Raises RedisError when Redis is unreachable.
    """
    cluster = is_cluster(redis)
    if cluster and first:
        # their channels are not in the `{sessions}` slot: the caller publishes them
        raise ValueError("on a Redis Cluster, publish `first` before the invalidation")
    keys: list[str] = []
    for scope in _scopes(workspace_ids):
        keys += [
            channels.cache_sessions_generation(scope),
            channels.cache_sessions_lists(scope),
        ]
    if cluster:
        keys.append(channels.cache_invalidations_sharded)
    messages = [channels.cache_sessions_invalidation(w) for w in sorted(workspace_ids)]
    args: list[str | bytes | int] = [GENERATION_TTL_SECONDS, len(first)]
    for channel, message in first:
        args += [channel, message]
    args += [channels.cache_invalidations, len(messages), *messages]
    for channel, message in announce:
        args += [channel, message]
    if cluster:
        # The subscribers' messages are written in the event-loop iteration of the
        # script's reply, so a reply to a later command comes after them whatever order
        # Redis writes one iteration's clients in. A cluster pipeline cannot promise the
        # one-packet order below: on a redirection (a failover, a resharding) it sends
        # its commands again one by one. (A read-your-writes check after a failover
        # failed once in CI with the one-packet order.)
        await redis.eval(_INVALIDATE, len(keys), *keys, *args)
        await redis.get(keys[0])
        return
    # A GET in the same packet before the script: this connection then has a reply
    # queued before the script's PUBLISHes queue the subscribers' messages, and Redis
    # writes the clients it queued later first, so the subscribers get theirs before our
    # reply. The script alone loses that race (a MULTI wins it with its early replies).
    async with redis.pipeline(transaction=False) as pipe:
        _ = pipe.get(keys[0])
        _ = pipe.eval(_INVALIDATE, len(keys), *keys, *args)
        await pipe.execute()


async def try_invalidate_sessions(
    redis: Redis, channels: Channels, workspace_id: str
) -> bool:
    """`invalidate_sessions` for one workspace that logs instead of raising."""
    try:
        await invalidate_sessions(redis, channels, {workspace_id})
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
    redis: Redis, channels: Channels, workspace_id: str | None, query_key: str
) -> tuple[bytes | None, int | None, str]:
    """(body, until epoch ms, current generation) of a list scoped to `workspace_id`
    (None: every workspace) in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        _ = pipe.hmget(
            channels.cache_sessions_lists(workspace_id),
            [query_key, f"{query_key}#until"],
        )
        _ = pipe.get(channels.cache_sessions_generation(workspace_id))
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
    workspace_id: str | None,
    query_key: str,
    seen_generation: str,
    body: bytes,
    until_ms: int,
) -> bool:
    """Store a list body with a freshness bound, only if its scope's generation is
    unchanged."""
    stored = await redis.eval(
        _STORE_IF_CURRENT_UNTIL,
        2,
        channels.cache_sessions_generation(workspace_id),
        channels.cache_sessions_lists(workspace_id),
        seen_generation,
        query_key,
        body,
        LIST_TTL_SECONDS,
        until_ms,
    )
    return bool(stored)
