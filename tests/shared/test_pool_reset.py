"""The pool returns connections without asyncpg's reset query (a round trip per release,
shared.db.connect), and still never hands out a connection inside a transaction."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db.connect import create_pool

pytestmark = pytest.mark.integration


async def test_release_sends_no_reset_query(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    watcher = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SELECT 'pool-reset-marker'")
        # pg_stat_activity.query is the backend's last statement: still ours after the
        # release (asyncpg's default reset would have sent pg_advisory_unlock_all & co.)
        last = await watcher.fetchval(
            "SELECT query FROM pg_stat_activity WHERE pid = $1", backend
        )
        assert last == "SELECT 'pool-reset-marker'"
    finally:
        await watcher.close()
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()
