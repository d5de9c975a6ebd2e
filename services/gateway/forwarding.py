"""Forwarding JSON-RPC calls between gateway instances over Redis.

A session's agent runs on one gateway, its owner. A call that reaches another instance is
published on the owner's `gateway:{instanceId}:rpc` channel as `{request, replyTo}`; the owner
executes it exactly as if it came over HTTP and publishes the reply on `replyTo`. Replies come
back on one pattern subscription per instance. PUBLISH answering 0 receivers means no process
listens for that owner any more: the caller may adopt the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.common.keys import CHANNELS, REDIS, SETTINGS
from services.gateway.keys import SESSION_MANAGER
from services.gateway.rpc import Method, RpcCall, RpcError
from shared.channels import Channels
from shared.errors import (
    INTERNAL_ERROR,
    SESSION_UNSERVABLE,
    AgentError,
    DomainError,
    SessionUnservable,
)
from shared.jsonutil import dumps, loads
from shared.redisconn import Redis

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
        backoff = 0.1
        while self._open():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.rpc_channel)
                await pubsub.psubscribe(self.reply_prefix + "*")
                self._ready.set()
                self.subscribed = True
                backoff = 0.1
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
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

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
        counts = await self._redis.pubsub_numsub(self._channels.gateway_rpc(owner))
        return bool(counts and counts[0][1] > 0)

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


GATEWAY_LINK = web.AppKey("gateway_link", GatewayLink)

# Beyond PROMPT_TIMEOUT a forwarded prompt still needs the owner's resume (agent start and
# load, 30 s per request); other calls are bounded by their agent requests.
FORWARD_MARGIN = 90.0
CALL_TIMEOUT = 120.0
# How often one call re-reads the owner after a race (an adoption elsewhere, a drain).
ROUTE_ATTEMPTS = 3


def _forward_timeout(call: RpcCall) -> float:
    if call.method == "session/prompt":
        return call.app[SETTINGS].prompt_timeout + FORWARD_MARGIN
    return CALL_TIMEOUT


async def route(call: RpcCall, local: Method) -> Any:
    """Run a session call here, on the session's owner, or here after adopting it.

    The owner is whoever holds a live lease. A call that reaches nobody on the owner's
    channel adopts the session (compare-and-swap on the lease), then runs here and resumes
    it. A call that was itself forwarded is never forwarded again (-32010).
    """
    sid = call.params.get("sessionId")
    manager = call.app[SESSION_MANAGER]
    link = call.app.get(GATEWAY_LINK)
    if not isinstance(sid, str) or link is None or manager.is_live_here(sid):
        return await local(call)
    for attempt in range(1, ROUTE_ATTEMPTS + 1):
        last = attempt == ROUTE_ATTEMPTS
        owner = await manager.leases.remote_owner(sid, call.allowed_workspaces)
        if owner is None:
            try:
                return await local(call)
            except SessionUnservable:
                # someone claimed it between our read and our claim: look again
                if last or call.forwarded:
                    raise
                continue
        if call.forwarded:
            raise SessionUnservable(f"Session owned by {owner}")
        request = {
            "jsonrpc": "2.0",
            "id": uuid.uuid4().hex,
            "method": call.method,
            "params": call.params,
        }
        try:
            reply = await link.forward(owner, request, timeout=_forward_timeout(call))
        except OwnerLost as err:
            if call.method == "session/prompt":
                # The turn died with its owner; adopt now so the log ends that turn and
                # the next call finds the session here.
                if await manager.leases.adopt(sid, owner):
                    with contextlib.suppress(DomainError):
                        await manager.ensure_live(sid, call.allowed_workspaces)
                raise AgentError(
                    f"Gateway instance {owner} stopped during the prompt; "
                    "the session can be prompted again"
                ) from err
            if await manager.leases.adopt(sid, owner):
                return await local(call)
            continue
        except OwnerUnreachable:
            if await manager.leases.adopt(sid, owner):
                logger.info("adopting session %s from %s", sid, owner)
                return await local(call)
            continue
        except TimeoutError as err:
            raise SessionUnservable(
                f"Session owner {owner} did not answer in time"
            ) from err
        error = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            if code == SESSION_UNSERVABLE and not last:
                continue  # the owner is draining or lost the session: look again
            raise RpcError(
                code if isinstance(code, int) else INTERNAL_ERROR,
                str(error.get("message", "")),
                data=error.get("data"),
            )
        return reply.get("result") if isinstance(reply, dict) else None
    raise SessionUnservable(f"Session {sid} cannot be served")


def routed(local: Method) -> Method:
    """`local` bound into `route`, so that it runs wherever the session lives."""
    return functools.partial(route, local=local)


def link_ctx(
    dispatch_factory: Callable[[web.Application], Dispatch],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Cleanup context owning the link; `dispatch_factory(app)` executes one request."""

    async def _ctx(app: web.Application) -> AsyncIterator[None]:
        link = GatewayLink(
            app[REDIS], app[CHANNELS], app[SETTINGS].instance_id, dispatch_factory(app)
        )
        app[GATEWAY_LINK] = link
        await link.start()
        yield
        await link.close()

    return _ctx
