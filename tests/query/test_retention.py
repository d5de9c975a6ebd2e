"""Event retention against real Postgres, in a database of its own (a pass covers the whole
database): old closed sessions lose their events and search documents and keep their row;
recent closed and open sessions keep everything; deletes are bounded; one pass at a time;
the query app's periodic task does it when EVENT_RETENTION_DAYS is set."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from yarl import URL

from services.query.app import create_app
from services.query.retention import run_pass
from shared.db import search as search_db
from shared.db.connect import Pool, create_pool
from shared.db.migrate import migrate
from shared.db.retention import RETENTION_LOCK_ID
from shared.events import encode_batch, gateway_update, store

pytestmark = pytest.mark.integration

EVENTS = 250  # per session: several batches of BATCH
BATCH = 40


@pytest.fixture(scope="module")
def retention_db() -> Iterator[str]:
    import os

    server = os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"routa_test_retention_{uuid.uuid4().hex[:8]}"
    url = str(URL(server).with_path(f"/{name}"))
    asyncio.run(migrate(url))
    yield url

    async def drop() -> None:
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@pytest.fixture
async def rpool(retention_db: str) -> AsyncIterator[Pool]:
    p = await create_pool(retention_db, min_size=1, max_size=4)
    yield p
    await p.close()


def turn(i: int) -> list[dict[str, object]]:
    """A prompt and a reply: an index pass makes two documents of them."""
    return [
        gateway_update("user_message", content={"type": "text", "text": f"prompt {i}"}),
        gateway_update(
            "agent_message_chunk",
            messageId=f"m{i}",
            content={"type": "text", "text": f"reply {i}"},
        ),
        gateway_update("turn_complete", stopReason="end_turn"),
    ]


async def make_session(
    pool: Pool, *, status: str, age_days: float, events: int = EVENTS
) -> uuid.UUID:
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workspaces (id, title) VALUES ('ret', 'ret') ON CONFLICT DO NOTHING"
        )
        await conn.execute(
            "INSERT INTO sessions (session_id, workspace_id, cwd, provider) "
            "VALUES ($1, 'ret', '/work', 'echo')",
            sid,
        )
        params: list[dict[str, object]] = []
        i = 0
        while len(params) < events:
            params += turn(i)
            i += 1
        await store(conn, sid, *encode_batch(params[:events]))
        await search_db.index_session(conn, sid)
        at = datetime.now(UTC) - timedelta(days=age_days)
        await conn.execute(
            "UPDATE sessions SET status = $2, last_activity = $3, updated_at = $3 "
            "WHERE session_id = $1",
            sid,
            status,
            at,
        )
    return sid


async def counts(pool: Pool, sid: uuid.UUID) -> tuple[int, int, int | None]:
    """(events, search documents, last_event_id or None when the row is gone)."""
    async with pool.acquire() as conn:
        events = await conn.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1", sid
        )
        docs = await conn.fetchval(
            "SELECT count(*) FROM search_documents WHERE session_id = $1", sid
        )
        last = await conn.fetchval(
            "SELECT last_event_id FROM sessions WHERE session_id = $1", sid
        )
    return int(events), int(docs), last


async def test_pass_deletes_old_closed_logs_in_bounded_batches(rpool: Pool) -> None:
    old = [await make_session(rpool, status="closed", age_days=40) for _ in range(3)]
    recent = await make_session(rpool, status="closed", age_days=5)
    open_old = await make_session(rpool, status="idle", age_days=40)
    active_old = await make_session(rpool, status="active", age_days=40)
    before = {sid: await counts(rpool, sid) for sid in (recent, open_old, active_old)}
    assert all(c[1] > 0 for c in before.values())  # the index pass made documents

    result = await run_pass(rpool, 30, batch=BATCH, pause=0)

    assert result.ran
    assert result.sessions == 3
    assert result.events == 3 * EVENTS
    assert result.largest_delete == BATCH
    # every session's events took several statements, none larger than BATCH
    assert result.statements >= 3 * (EVENTS // BATCH)
    for sid in old:
        assert await counts(rpool, sid) == (0, 0, EVENTS)  # row and counter stay
    for sid, c in before.items():
        assert await counts(rpool, sid) == c

    # a second pass finds nothing left to do
    again = await run_pass(rpool, 30, batch=BATCH, pause=0)
    assert (again.ran, again.sessions, again.events) == (True, 0, 0)

    # new events of a cleaned session continue after the old ids
    async with rpool.acquire() as conn:
        stored = await store(conn, old[0], *encode_batch(turn(99)[:1]))
    assert stored[0].event_id == EVENTS + 1


async def test_window_edge_follows_the_last_change(rpool: Pool) -> None:
    """A session closed 40 days ago but renamed yesterday is not expired yet."""
    sid = await make_session(rpool, status="closed", age_days=40)
    async with rpool.acquire() as conn:
        await conn.execute(
            "UPDATE sessions SET updated_at = now() - interval '1 day' WHERE session_id = $1",
            sid,
        )
    result = await run_pass(rpool, 30, batch=BATCH, pause=0)
    assert result.ran
    events, docs, _ = await counts(rpool, sid)
    assert events == EVENTS
    assert docs > 0
    # ... and goes once the window has passed it too
    later = await run_pass(
        rpool, 30, batch=BATCH, pause=0, now=datetime.now(UTC) + timedelta(days=31)
    )
    assert later.sessions >= 1
    assert (await counts(rpool, sid))[:2] == (0, 0)


async def test_one_pass_at_a_time(rpool: Pool, retention_db: str) -> None:
    sid = await make_session(rpool, status="closed", age_days=40)
    holder = await asyncpg.connect(retention_db)
    try:
        assert await holder.fetchval(
            "SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID
        )
        skipped = await run_pass(rpool, 30, batch=BATCH, pause=0)
        assert not skipped.ran
        assert (await counts(rpool, sid))[0] == EVENTS
    finally:
        await holder.close()  # releases the lock
    done = await run_pass(rpool, 30, batch=BATCH, pause=0)
    assert done.ran
    assert (await counts(rpool, sid))[0] == 0


async def test_a_failed_unlock_closes_the_connection_so_no_lock_stays(
    rpool: Pool, retention_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool does not reset connections: a pass whose unlock fails must not leave the
    lock on a pooled connection, or no later pass of any instance would run."""

    async def broken_unlock(conn: object) -> None:
        raise OSError("connection lost during unlock")

    monkeypatch.setattr("services.query.retention.db.unlock", broken_unlock)
    with pytest.raises(OSError):
        await run_pass(rpool, 30, batch=BATCH, pause=0)
    monkeypatch.undo()
    other = await asyncpg.connect(retention_db)
    try:
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID
        )
        await other.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)
    finally:
        await other.close()
    assert (await run_pass(rpool, 30, batch=BATCH, pause=0)).ran


async def test_query_app_runs_the_periodic_pass(
    rpool: Pool, retention_db: str, make_settings, aiohttp_client
) -> None:
    old = await make_session(rpool, status="closed", age_days=40)
    recent = await make_session(rpool, status="closed", age_days=1)
    app = create_app(
        make_settings(
            database_url=retention_db,
            event_retention_days=30,
            event_retention_interval=0.05,
        )
    )
    await aiohttp_client(app)
    async with asyncio.timeout(30):  # hang guard only
        while (await counts(rpool, old))[0]:
            await asyncio.sleep(0.05)
    assert (await counts(rpool, recent))[0] == EVENTS


async def test_retention_is_off_by_default(make_settings) -> None:
    assert make_settings().event_retention_days is None
