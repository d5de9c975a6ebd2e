"""The hub's listener blocks in its Redis read without a timer; stop() still ends it when
redis-py swallows the cancellation inside that read (redis/redis-py#2028). Real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio.client import PubSub

from services.common.hub import Hub, StreamConfig
from shared.channels import Channels
from shared.events import encode, gateway_update


def _encode(payload: bytes) -> tuple[int, bytes]:
    return (0, payload)


async def test_stop_ends_a_listener_that_swallowed_its_cancellation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = PubSub.get_message
    swallowed: list[int] = []

    async def swallowing(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        # as redis-py does at times: the read's CancelledError never reaches the task
        while True:
            try:
                return await real(self, *args, **kwargs)
            except asyncio.CancelledError:
                swallowed.append(1)
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()

    monkeypatch.setattr(PubSub, "get_message", swallowing)
    names = Channels(f"hubstop-{uuid.uuid4().hex[:8]}")
    sid = str(uuid.uuid4())
    hub = Hub(redis_url, StreamConfig())
    await hub.start()
    sub = await hub.subscribe(sid, names.session_events(sid), _encode)
    async with asyncio.timeout(30):
        await hub.connected.wait()
    # the listener delivers, then blocks in its next read
    redis = hub._redis  # the hub's own client: same server, same prefix rules
    payload = encode(sid, 1, gateway_update("acp_status", status="ready"))
    async with asyncio.timeout(30):
        while sub.queue.empty():
            await redis.publish(names.session_events(sid), payload)
            await asyncio.sleep(0.05)
    listener = hub._task
    assert listener is not None
    await hub.stop()
    assert swallowed, "the cancellation never reached the read"
    assert listener.done()
