"""The `routa:v1:commands` stream: JSON-RPC requests from internal services.

Every gateway reads the stream in one consumer group, so each entry runs on exactly one
instance, exactly as if it came over HTTP (same dispatch, so a session owned elsewhere is
forwarded). The reply is published as a JSON string on the entry's `replyTo` channel; a
notification gets none. Entries a dead consumer left pending are claimed after a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from shared.channels import Channels
from shared.jsonutil import dumps
from shared.redisconn import Redis
from shared.retry import Backoff

logger = logging.getLogger(__name__)

DispatchBytes = Callable[[bytes], Awaitable[bytes | None]]

READ_BLOCK_MS = 500
READ_COUNT = 16
# An entry pending this long on a consumer that stopped is taken over by another.
CLAIM_IDLE_MS = 10 * 60 * 1000


class CommandConsumer:
    def __init__(
        self, redis: Redis, channels: Channels, consumer: str, dispatch: DispatchBytes
    ) -> None:
        self._redis = redis
        self._channels = channels
        self._consumer = consumer
        self._dispatch = dispatch
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commands-consumer")

    async def stop_reading(self) -> None:
        """Drain: take no new entries (other gateways in the group do); running ones finish."""
        task, self._task = self._task, None
        if task is None:
            return
        # The flag as well as the cancel: a cancel landing while redis-py sets up its
        # first connection can be lost; the loop then ends after its next (short) read.
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        await self.stop_reading()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _ensure_group(self) -> None:
        # From "0": commands queued before any gateway started are still executed.
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self._redis.xgroup_create(
                self._channels.commands,
                self._channels.commands_group,
                id="0",
                mkstream=True,
            )

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._ensure_group()
                await self._claim_abandoned()
                while not self._stopping:
                    batches: Any = await self._redis.xreadgroup(
                        self._channels.commands_group,
                        self._consumer,
                        {self._channels.commands: ">"},
                        count=READ_COUNT,
                        block=READ_BLOCK_MS,
                    )
                    backoff.reset()
                    for _stream, entries in batches or []:
                        for entry_id, fields in entries:
                            self._spawn(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                logger.warning("commands stream unavailable: %s", err)
                await backoff.wait()

    async def _claim_abandoned(self) -> None:
        result: Any = await self._redis.xautoclaim(
            self._channels.commands,
            self._channels.commands_group,
            self._consumer,
            min_idle_time=CLAIM_IDLE_MS,
            start_id="0",
            count=READ_COUNT,
        )
        for entry_id, fields in result[1] if len(result) > 1 else []:
            if fields:
                self._spawn(entry_id, fields)

    def _spawn(self, entry_id: Any, fields: dict[Any, Any]) -> None:
        task = asyncio.create_task(self._execute(entry_id, fields))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, entry_id: Any, fields: dict[Any, Any]) -> None:
        def field(name: str) -> bytes | None:
            value = fields.get(name.encode(), fields.get(name))
            if isinstance(value, str):
                return value.encode()
            return value if isinstance(value, bytes) else None

        request = field("request")
        reply_to = field("replyTo")
        if request is None:
            reply: bytes | None = dumps(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {
                        "code": -32600,
                        "message": "Stream entry has no request field",
                    },
                }
            )
        else:
            reply = await self._dispatch(request)
        try:
            if reply is not None and reply_to:
                await self._redis.publish(reply_to.decode(), reply)
            await self._redis.xack(
                self._channels.commands, self._channels.commands_group, entry_id
            )
        except (RedisError, OSError) as err:
            logger.warning("command %s: reply or ack failed: %s", entry_id, err)
