"""Security test helpers: two workspaces, tokens scoped to each, apps with auth on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from yarl import URL

from shared.db.migrate import migrate
from tests.gateway.eventlog_support import new_session

TOKEN_A = "tok-a-" + uuid.uuid4().hex
TOKEN_B = "tok-b-" + uuid.uuid4().hex
TOKEN_ALL = "tok-all-" + uuid.uuid4().hex


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def private_database_url(database_url: str) -> AsyncIterator[str]:
    """A database of this test's own: a token created in it turns auth on for good, and
    that must not reach the other tests of the run. Request it first, so it is dropped last."""
    base = URL(database_url)
    name = f"{base.path.lstrip('/')}_{uuid.uuid4().hex[:8]}"
    url = str(base.with_path(f"/{name}"))
    await migrate(url)
    yield url
    admin = await asyncpg.connect(str(base.with_path("/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def two_workspaces(pool) -> tuple[str, str]:
    names = (f"ws-a-{uuid.uuid4().hex[:8]}", f"ws-b-{uuid.uuid4().hex[:8]}")
    for ws in names:
        await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", ws)
    return names


@pytest.fixture
def auth_tokens(two_workspaces) -> str:
    ws_a, ws_b = two_workspaces
    return f"{TOKEN_A}={ws_a};{TOKEN_B}={ws_b};{TOKEN_ALL}=*"


async def insert_session(pool, workspace_id: str) -> str:
    """A bare session row (no agent); its id as the routes spell it."""
    return str(await new_session(pool, workspace_id))
