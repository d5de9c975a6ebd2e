"""The stored event's bytes, defined once: encode, read the eventId, the SSE frame, record.

A stored event is a session/update params object with our `sessionId` and the `eventId`
in front: `{"sessionId":"<id>","eventId":"<n>",<the params' other fields>}`. It is encoded
once, when it is queued: Postgres stores these bytes (as text), Redis carries them, and
every SSE stream wraps them in the same frame without parsing them again.

`record` stores events (one statement: the session's counter and the insert), runs a
search index pass over the session (its own statement, after the store) and then
publishes them on the session's channel (one Lua call per chunk). The gateway's event
writer calls `store` and `publish` itself: it retries the store with a batch id, publishes
one batch while storing the next, and indexes when it has nothing left to store. The query service (rename,
disconnect) and the tests write through the same functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
from redis.exceptions import NoScriptError, RedisError

from shared.channels import Channels
from shared.db import search, session_events
from shared.db.connect import Executor
from shared.db.session_events import State, StoredEvent
from shared.redisconn import Redis

logger = logging.getLogger(__name__)

# the payload up to the eventId's digits; then the digits, then `encode_rest`
_HEAD = b'{"sessionId":"%s","eventId":"'
_ID_MARK = b'"eventId":"'
# where the eventId mark ends at the latest: a session id is a UUID (36 characters)
_ID_MARK_END = len(_HEAD % (b"0" * 36))
# the SSE frame of an event: `id:`, then the JSON-RPC notification around the payload
SSE_DATA_PREFIX = b'data: {"jsonrpc":"2.0","method":"session/update","params":'


def gateway_update(kind: str, **fields: Any) -> dict[str, Any]:
    """params of an event the product makes itself (user_message, acp_status, ...)."""
    return {"update": {"sessionUpdate": kind, **fields}}


def kind_of(params: dict[str, Any]) -> str:
    """The event's kind (`update.sessionUpdate`), stored beside it for queries."""
    update = params.get("update")
    if isinstance(update, dict):
        kind = update.get("sessionUpdate")
        if isinstance(kind, str):
            return kind
    return "unknown"


def head(session_id: str) -> bytes:
    """The payload's bytes before the eventId's digits."""
    return _HEAD % session_id.encode()


def encode_rest(params: dict[str, Any]) -> bytes:
    """The payload after the eventId's digits: `"` then the params' other fields and `}`."""
    fields = {k: v for k, v in params.items() if k not in ("sessionId", "eventId")}
    try:
        body = orjson.dumps(fields)
    except orjson.JSONEncodeError:
        # what orjson refuses (an integer over 64 bits from the SDK's parse) stays an event
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return b'"}' if body == b"{}" else b'",' + body[1:]


def encode_batch(
    params_list: Sequence[dict[str, Any]],
) -> tuple[list[str], list[bytes]]:
    """Kinds and `encode_rest` bytes of events, as `store` takes them."""
    return [kind_of(p) for p in params_list], [encode_rest(p) for p in params_list]


def assemble(head_bytes: bytes, event_id: int, rest: bytes) -> bytes:
    """The payload from its three parts (as the store statement joins them in SQL)."""
    return b"%s%d%s" % (head_bytes, event_id, rest)


def encode(session_id: str, event_id: int, params: dict[str, Any]) -> bytes:
    """The stored event: the agent's params with our sessionId and the eventId."""
    return assemble(head(session_id), event_id, encode_rest(params))


def event_id_of(payload: bytes) -> int | None:
    """The eventId of a stored event, read from where `encode` puts it (no parse)."""
    start = payload.find(_ID_MARK, 0, _ID_MARK_END)
    if start != -1:
        start += len(_ID_MARK)
        end = payload.find(b'"', start, start + 20)
        digits = payload[start:end] if end != -1 else b""
        if digits.isdigit():
            return int(digits)
    try:  # not our layout (never from our writers): parse it
        value = orjson.loads(payload).get("eventId")
        return int(value)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def sse_frame(event_id: int, payload: bytes) -> bytes:
    """The SSE frame of one stored event, built once for all the streams that send it."""
    return b"id: %d\n%s%s}\n\n" % (event_id, SSE_DATA_PREFIX, payload)


async def store(
    conn: Executor,
    session_id: uuid.UUID,
    kinds: Sequence[str],
    rests: Sequence[bytes],
    *,
    batch_id: uuid.UUID | None = None,
    state: State | None = None,
    generation: int | None = None,
) -> list[StoredEvent]:
    """Store events given as their kinds and `encode_rest` bytes, in one statement.

    Returns them with their ids and payloads, byte for byte as stored. `batch_id`,
    `state` and `generation` as in `session_events.append_batch`.
    """
    if not rests:
        return []
    head_bytes = head(str(session_id))
    first = await session_events.append_batch(
        conn,
        session_id,
        head_bytes,
        kinds,
        rests,
        batch_id=batch_id,
        state=state,
        generation=generation,
    )
    return [
        StoredEvent(first + i, assemble(head_bytes, first + i, rest))
        for i, rest in enumerate(rests)
    ]


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


async def publish(
    redis: Redis, channels: Channels, session_id: str, events: Sequence[StoredEvent]
) -> bool:
    """Publish stored events in order, one script call per PUBLISH_CHUNK events.

    False when Redis is unreachable: subscribers catch up from the log.
    """
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


async def record(
    conn: Executor,
    session_id: uuid.UUID,
    params_list: Sequence[dict[str, Any]],
    *,
    redis: Redis | None = None,
    channels: Channels | None = None,
    publish_within: float | None = None,
) -> list[StoredEvent]:
    """Store events (raises on Postgres failure), index, then publish them (never raises).

    The index pass is best effort: when it fails the session's next pass covers these
    events. Without `redis` and `channels` it only stores (Redis is known to be down, or nobody
    listens). `publish_within` bounds the publish; past it subscribers catch up from the
    log, as after any lost publish.
    """
    events = await store(conn, session_id, *encode_batch(params_list))
    if events:
        try:
            await search.index_session(conn, session_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            logger.warning("search index pass of %s failed: %s", session_id, err)
    if redis is not None and channels is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(publish_within):
                await publish(redis, channels, str(session_id), events)
    return events
