"""Session lifecycle messages on the workspace channel.

Every writer of session data calls `session_changed` after its Postgres commit: it keeps the
list cache true and tells internal services and dashboards what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from redis.exceptions import RedisError

from shared.cache import invalidate_sessions
from shared.channels import Channels
from shared.db.session_events import StoredEvent
from shared.events import publish
from shared.jsonutil import dumps, now_iso
from shared.redisconn import Redis, is_cluster

logger = logging.getLogger(__name__)

LifecycleType = Literal["session:created", "session:updated", "session:deleted"]


def lifecycle_message(
    type_: LifecycleType, session_id: str, workspace_id: str, changes: dict[str, Any]
) -> bytes:
    return dumps(
        {
            "type": type_,
            "sessionId": session_id,
            "workspaceId": workspace_id,
            "changes": changes,
            "at": now_iso(),
        }
    )


async def session_changed(
    redis: Redis,
    channels: Channels,
    type_: LifecycleType,
    session_id: str,
    workspace_id: str,
    changes: dict[str, Any],
) -> bool:
    """Invalidate the cached lists of the session's workspace (and the unscoped ones) and
    publish the lifecycle message.

    Returns False (and logs) when Redis is unreachable: Postgres already holds the change and
    readers fall back to it, so a Redis outage never fails the write.
    """
    try:
        await invalidate_sessions(
            redis,
            channels,
            {workspace_id},
            (
                channels.workspace_sessions(workspace_id),
                lifecycle_message(type_, session_id, workspace_id, changes),
            ),
        )
    except (RedisError, OSError) as err:
        logger.warning("lifecycle publish failed for session %s: %s", session_id, err)
        return False
    return True


async def session_changed_with_events(
    redis: Redis,
    channels: Channels,
    type_: LifecycleType,
    session_id: str,
    workspace_id: str,
    changes: dict[str, Any],
    events: Sequence[StoredEvent],
) -> bool:
    """Publish stored `events`, then `session_changed`, in ONE round trip (one script).

    Same messages in the same order as `shared.events.publish` followed by `session_changed`
    (session/new: event 1, the invalidation, `session:created`); False when Redis is
    unreachable, like them. On a Redis Cluster (or with sharded event channels) the events
    go to their session's slot first, then the rest: two round trips, same order.
    """
    if is_cluster(redis) or channels.sharded:
        if not await publish(redis, channels, session_id, events):
            return False
        return await session_changed(
            redis, channels, type_, session_id, workspace_id, changes
        )
    events_channel = channels.session_events(session_id)
    try:
        await invalidate_sessions(
            redis,
            channels,
            {workspace_id},
            (
                channels.workspace_sessions(workspace_id),
                lifecycle_message(type_, session_id, workspace_id, changes),
            ),
            first=[(events_channel, event.payload) for event in events],
        )
    except (RedisError, OSError) as err:
        logger.warning("lifecycle publish failed for session %s: %s", session_id, err)
        return False
    return True
