"""The control listener stops with its app even when its cancellation is lost.

A stop under way when the app shuts down (a session deleted just before) can swallow the
listener's cancellation: an `asyncio.timeout` expiring in the same iteration does on
Python 3.11, and so can redis-py's read. The cleanup used to await the task for ever.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from services.common.keys import CHANNELS, REDIS, SETTINGS
from services.gateway import control
from services.gateway.app import create_app

HANG_GUARD = 30.0  # past control.STOP_WAIT; a hang guard only


async def test_a_lost_cancellation_does_not_hold_the_cleanup(
    settings, aiohttp_client, cwd_root, monkeypatch
) -> None:
    handling = asyncio.Event()

    async def swallowing(app, message) -> bool:
        handling.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as described above
            await asyncio.sleep(60)
        return False

    monkeypatch.setattr(control, "handle_control", swallowing)
    client = await aiohttp_client(create_app(settings))
    app = client.app
    channel = app[CHANNELS].gateway_control(app[SETTINGS].instance_id)
    body = orjson.dumps({"type": "stop", "sessionId": "x", "reason": "deleted"})
    async with asyncio.timeout(HANG_GUARD):
        while not handling.is_set():
            await app[REDIS].publish(channel, body)
            await asyncio.sleep(0.05)
    async with asyncio.timeout(HANG_GUARD) as guard:
        await client.close()  # the app's cleanup, control_ctx's included
    # the old cleanup waited until the guard cancelled it (and swallowed that too)
    assert not guard.expired()
    left = [t for t in asyncio.all_tasks() if t.get_name() == "gateway-control"]
    assert not left, left
