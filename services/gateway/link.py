"""This instance's end of the gateway-to-gateway channel.

Serves calls other gateways forward here and sends calls to a session's owner; the
routing decision (forwarding.route) reads it from the app under keys.GATEWAY_LINK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared.channels import Channels
from shared.jsonutil import dumps, loads
from shared.redisconn import Redis, channel_subscribers, is_cluster, pubsub_of
from shared.retry import Backoff

logger = logging.getLogger(__name__)

# How often a waiting caller checks that the owner still listens.
OWNER_CHECK_INTERVAL = 2.0

Dispatch = Callable[[dict[str, Any]], Awaitable[Any]]


class OwnerUnreachable(Exception):
    """No process listens on the owner's channel: it died or its lease is stale."""


class OwnerLost(OwnerUnreachable):
    """The owner stopped listening after it took the call: the call may have half run."""


class GatewayLink:
    """This instance's end of the gateway-to-gateway channel: serves and sends forwarded calls."""

    def __init__(
        self, redis: Redis, channels: Channels, instance_id: str, dispatch: Dispatch
    ) -> None:
        self._redis = redis
        self._channels = channels
        self._instance_id = instance_id
        self._dispatch = dispatch
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        self._ready = asyncio.Event()
        # True while the rpc channel is subscribed (readiness depends on it)
        self.subscribed = False
        self._closing = False

    @property
    def rpc_channel(self) -> str:
        return self._channels.gateway_rpc(self._instance_id)

    @property
    def reply_prefix(self) -> str:
        return self._channels.reply(f"{self._instance_id}:")

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="gateway-link")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._ready.wait()

    async def close(self) -> None:
        # the flag too: a cancel lost inside redis-py must not keep the listener alive
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(OwnerUnreachable("gateway shutting down"))

    def _open(self) -> bool:
        return not self._closing

    async def _listen(self) -> None:
        """Subscribe to our rpc channel and our replies; resubscribe after Redis outages."""
        backoff = Backoff()
        while self._open():
            pubsub = self._redis.pubsub()
            try:
                pubsub = await pubsub_of(self._redis)
                await pubsub.subscribe(self.rpc_channel)
                await pubsub.psubscribe(self.reply_prefix + "*")
                self._ready.set()
                self.subscribed = True
                backoff.reset()
                while self._open():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None:
                        self._on_message(message)
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except (RedisError, OSError) as err:
                self.subscribed = False
                logger.warning("gateway link lost Redis: %s", err)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await backoff.wait()

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        try:
            body = loads(message["data"])
        except ValueError:
            logger.warning("unreadable message on %s", channel)
            return
        if channel == self.rpc_channel:
            task = asyncio.create_task(self._serve(body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        token = channel.removeprefix(self.reply_prefix)
        future = self._pending.get(token)
        if future is not None and not future.done():
            future.set_result(body)

    async def _serve(self, body: dict[str, Any]) -> None:
        """Execute a call another instance forwarded to us, and publish the reply."""
        request = body.get("request")
        reply_to = body.get("replyTo")
        if not isinstance(request, dict) or not isinstance(reply_to, str):
            logger.warning("malformed forwarded call dropped")
            return
        reply = await self._dispatch(request)
        if reply is None:
            return
        try:
            await self._redis.publish(reply_to, dumps(reply))
        except (RedisError, OSError) as err:
            logger.warning("could not publish forwarded reply: %s", err)

    async def owner_listens(self, owner: str) -> bool:
        return (
            await channel_subscribers(self._redis, self._channels.gateway_rpc(owner))
            > 0
        )

    async def forward(
        self, owner: str, request: dict[str, Any], *, timeout: float
    ) -> Any:
        """Run `request` on `owner` and return its JSON-RPC reply object.

        Raises OwnerUnreachable when nobody listens for `owner`, before or during the call.
        """
        token = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            receivers = await self._redis.publish(
                self._channels.gateway_rpc(owner),
                dumps({"request": request, "replyTo": self.reply_prefix + token}),
            )
            if is_cluster(self._redis):
                # PUBLISH counts only the receiving node's subscribers on a cluster; the
                # message itself reaches every node, so ask them all who listens
                receivers = await channel_subscribers(
                    self._redis, self._channels.gateway_rpc(owner)
                )
            if receivers == 0:
                raise OwnerUnreachable(owner)
            async with asyncio.timeout(timeout):
                while True:
                    done, _ = await asyncio.wait({future}, timeout=OWNER_CHECK_INTERVAL)
                    if done:
                        return future.result()
                    if not await self.owner_listens(owner):
                        raise OwnerLost(owner)
        finally:
            self._pending.pop(token, None)
