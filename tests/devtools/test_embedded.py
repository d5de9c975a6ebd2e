"""The private servers the run command and the test harness start on Python-only machines."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.devtools.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    postgres_answers,
    redis_answers,
)


@pytest.fixture
def embedded_redis(data_tmp):
    with EmbeddedRedis(data_tmp / "redis") as server:
        yield server


async def test_embedded_redis_answers_ping(embedded_redis):
    client = aioredis.from_url(embedded_redis.url)
    try:
        assert await client.ping() is True
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_embedded_redis_stops(data_tmp):
    server = EmbeddedRedis(data_tmp / "redis")
    server.start()
    url = server.url
    assert await redis_answers(url)
    server.stop()
    assert not await redis_answers(url)


async def test_embedded_postgres_answers_a_query_and_keeps_its_data(data_tmp):
    server = EmbeddedPostgres(data_tmp / "pg" / "data", fsync=False)
    server.start()
    try:
        conn = await asyncpg.connect(server.url())
        try:
            assert await conn.fetchval("SELECT 40 + 2") == 42
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        finally:
            await conn.close()
    finally:
        server.stop()
    assert not await postgres_answers(server.url())

    # a second start reuses the data directory (no initdb), as the run command does
    again = EmbeddedPostgres(data_tmp / "pg" / "data", fsync=False)
    with again:
        conn = await asyncpg.connect(again.url())
        try:
            assert await conn.fetchval("SELECT v FROM kept") == 7
        finally:
            await conn.close()


async def test_postgres_answers_is_false_for_a_closed_port():
    assert not await postgres_answers("postgresql://postgres@127.0.0.1:1/routa")
    assert not await redis_answers("redis://127.0.0.1:1/0")
