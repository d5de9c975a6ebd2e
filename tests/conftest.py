"""Test harness: a fresh database and a unique Redis prefix per run, real servers only.

TEST_DATABASE_URL / TEST_REDIS_URL name the servers (defaults: the machine's own). Each run
creates its own database and drops it at the end, and uses its own REDIS_PREFIX, so a
developer's run, CI and a benchmark never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from yarl import URL

from shared.channels import Channels
from shared.db.connect import Pool, create_pool
from shared.db.migrate import migrate
from shared.redisconn import Redis, create_redis
from shared.settings import Settings

RUN_ID = uuid.uuid4().hex[:10]


def _server_url() -> str:
    return os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


@pytest.fixture(scope="session", autouse=True)
def _embedded_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Only-Python machines: private Postgres/Redis when the configured ones do not answer.

    Autouse and session-scoped, so it runs before `database_url`/`redis_url` and points
    TEST_DATABASE_URL / TEST_REDIS_URL at the embedded servers for the whole run.
    """
    from services.devtools.embedded import (
        EmbeddedPostgres,
        EmbeddedRedis,
        postgres_answers,
        redis_answers,
    )

    redis_server_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        if not asyncio.run(postgres_answers(_server_url())):
            # not under pytest's basetemp: a concurrent pytest resets it to 0700, and as
            # root the server runs as another user that must traverse to its data
            root = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(
                        prefix="routa-embedded-", ignore_cleanup_errors=True
                    )
                )
            )
            pg = stack.enter_context(EmbeddedPostgres(root / "data", fsync=False))
            mp.setenv("TEST_DATABASE_URL", pg.url("postgres"))
        if not asyncio.run(redis_answers(redis_server_url)):
            rd = stack.enter_context(
                EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
            )
            mp.setenv("TEST_REDIS_URL", rd.url)
        yield


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = URL(_server_url()).with_path(f"/routa_test_{RUN_ID}")
    asyncio.run(migrate(str(url)))
    yield str(url)

    async def _drop() -> None:
        admin = await asyncpg.connect(_server_url())
        try:
            await admin.execute(
                f'DROP DATABASE IF EXISTS "routa_test_{RUN_ID}" WITH (FORCE)'
            )
        finally:
            await admin.close()

    asyncio.run(_drop())


@pytest.fixture
async def fresh_db(database_url: str) -> AsyncIterator[str]:
    """The URL of a database of its own, not created yet (a migration test creates it with
    its own set of migrations); dropped after the test."""
    name = f"routa_fresh_{uuid.uuid4().hex[:8]}"
    yield str(URL(database_url).with_path(f"/{name}"))
    admin = await asyncpg.connect(str(URL(database_url).with_path("/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def make_settings(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings for one app instance; keyword overrides take the Settings field names."""
    data_dir = tmp_path_factory.mktemp("data")

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_prefix": f"test-{RUN_ID}",
            "data_dir": data_dir,
            "instance_id": f"test-{uuid.uuid4().hex[:8]}",
            "lease_ttl": 15.0,
            "pg_pool_max": 5,
        }
        values.update(overrides)
        return Settings(**values)

    return _make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def channels(settings: Settings) -> Channels:
    return Channels(settings.redis_prefix, sharded=settings.sharded_pubsub)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def workspace_id(pool: Pool) -> str:
    """A fresh workspace per test, so tests never see each other's rows."""
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute(
        "INSERT INTO workspaces (id, title) VALUES ($1, $2)", ws, f"Test {ws}"
    )
    return ws


@pytest.fixture
def cwd_root(settings: Settings) -> Path:
    root = settings.cwd_root
    root.mkdir(parents=True, exist_ok=True)
    return root
