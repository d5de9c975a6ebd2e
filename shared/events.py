"""Recording session events: store in Postgres first, then publish on the session channel."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from shared.channels import Channels
from shared.db import session_events
from shared.db.connect import Pool
from shared.db.session_events import StoredEvent
from shared.redisconn import Redis

logger = logging.getLogger(__name__)


def gateway_update(kind: str, **fields: Any) -> dict[str, Any]:
    """params of an event the product makes itself (user_message, acp_status, ...)."""
    return {"update": {"sessionUpdate": kind, **fields}}


async def publish_events(
    redis: Redis, channels: Channels, session_id: str, events: Sequence[StoredEvent]
) -> bool:
    """Publish stored events in order; False when Redis is unreachable (subscribers catch up from the log)."""
    if not events:
        return True
    channel = channels.session_events(session_id)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for event in events:
                if channels.sharded:
                    _ = pipe.spublish(channel, event.payload)
                else:
                    _ = pipe.publish(channel, event.payload)
            await pipe.execute()
    except (RedisError, OSError) as err:
        logger.warning("event publish failed for session %s: %s", session_id, err)
        return False
    return True


# Every ARGV published on KEYS[1] in order: one command and one reply for a whole batch
# instead of a pipeline's reply per event (py-spy: the pipeline's per-reply parsing was
# the writer's largest cost). Subscribers still get one message per event.
# With sharded pub/sub the same with SPUBLISH: the channel is the script's one key, so on
# a cluster the call runs on the node that serves the session's slot.
_PUBLISH_ALL = """
for i = 1, #ARGV do redis.call('PUBLISH', KEYS[1], ARGV[i]) end
return #ARGV
"""
_SPUBLISH_ALL = _PUBLISH_ALL.replace("'PUBLISH'", "'SPUBLISH'")
_PUBLISH_ALL_SHA = hashlib.sha1(_PUBLISH_ALL.encode()).hexdigest()
_SPUBLISH_ALL_SHA = hashlib.sha1(_SPUBLISH_ALL.encode()).hexdigest()
PUBLISH_CHUNK = 1000  # events per script call, so one call never holds Redis long


async def publish_batch(
    redis: Redis, channels: Channels, session_id: str, events: Sequence[StoredEvent]
) -> bool:
    """`publish_events` with one script call per PUBLISH_CHUNK events; same messages."""
    if not events:
        return True
    channel = channels.session_events(session_id)
    script, sha = (
        (_SPUBLISH_ALL, _SPUBLISH_ALL_SHA)
        if channels.sharded
        else (_PUBLISH_ALL, _PUBLISH_ALL_SHA)
    )
    try:
        for start in range(0, len(events), PUBLISH_CHUNK):
            payloads = [e.payload for e in events[start : start + PUBLISH_CHUNK]]
            try:
                await redis.evalsha(sha, 1, channel, *payloads)
            except NoScriptError:
                await redis.eval(script, 1, channel, *payloads)
    except (RedisError, OSError) as err:
        logger.warning("event publish failed for session %s: %s", session_id, err)
        return False
    return True


async def record_events(
    pool: Pool,
    redis: Redis,
    channels: Channels,
    session_id: uuid.UUID,
    params_list: Sequence[dict[str, Any]],
) -> list[StoredEvent]:
    """Append to the log (raises on Postgres failure), then publish (never raises)."""
    async with pool.acquire() as conn:
        events = await session_events.append(conn, session_id, params_list)
    await publish_events(redis, channels, str(session_id), events)
    return events
