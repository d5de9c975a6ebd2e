"""Shutdown never waits forever on a Postgres connection somebody still holds.

asyncpg's Pool.close waits until every connection is given back; a task stuck while
holding one (a bug, a hung statement) would hold the process's shutdown with it. The
cleanup context waits POOL_CLOSE_WAIT, then terminates the pool and says so.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from aiohttp import web

from services.common import resources
from services.common.keys import PG_POOL, SETTINGS

pytestmark = pytest.mark.timeout(60)


async def test_a_held_connection_does_not_hold_the_shutdown(
    make_settings, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(resources, "POOL_CLOSE_WAIT", 0.5)
    app = web.Application()
    app[SETTINGS] = make_settings()
    ctx = resources.postgres_ctx(app)
    await ctx.__anext__()
    pool = app[PG_POOL]
    held = await pool.acquire()  # never given back
    assert await held.fetchval("SELECT 1") == 1
    caplog.set_level(logging.ERROR, logger=resources.logger.name)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(ctx.__anext__(), 30)  # without the bound: forever
    with pytest.raises(asyncpg.InterfaceError):  # its connection was terminated
        await held.fetchval("SELECT 1")
    assert any("terminated" in r.getMessage() for r in caplog.records)
