"""Connecting to Postgres: database creation and the pool with its JSON codecs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import orjson
from yarl import URL

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # asyncpg-stubs make these generic over the record class; at run time they are not.
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    )
    # anything that can run a query: a pool or one connection
    Executor: TypeAlias = Pool | Connection
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection
    Executor = asyncpg.Pool


async def ensure_database(database_url: str) -> None:
    """Create the database named in `database_url` when it does not exist."""
    url = URL(database_url)
    name = url.path.lstrip("/")
    if not name:
        return
    try:
        conn = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    admin = await asyncpg.connect(str(url.with_path("/postgres")))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        # created concurrently by another process: fine
        with contextlib.suppress(
            asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError
        ):
            await admin.execute(f"CREATE DATABASE {quoted}")
    finally:
        await admin.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _end_transaction_only(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;` on every release: a round trip that each event store, session/new and
    list query waited for before going on (about a quarter of a single-event store's
    acquire-store-release time). Before calling this, asyncpg still rolls back a
    transaction left open and drops listeners. Our code leaves no other state on a
    pooled connection: no session-level SET, LISTEN, cursor outside a transaction or
    advisory lock, except the retention pass's lock, which unlocks it itself or closes
    the connection (services/query/retention.py).
    """


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 5.0
) -> Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_end_transaction_only,
        timeout=timeout,
        command_timeout=30,
    )
    assert pool is not None
    return pool
