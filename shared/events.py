"""Recording session events: store in Postgres first, then publish on the session channel."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

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
                _ = pipe.publish(channel, event.payload)
            await pipe.execute()
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
