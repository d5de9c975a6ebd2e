"""The session list's SQL keeps an index plan when Postgres switches to the generic plan.

asyncpg prepares every statement, and after five executions Postgres may plan it once for
any parameter values (the generic plan). A list text with optional filters
(`$1 IS NULL OR workspace_id = $1`) then has no index to use and reads the whole table on
every cache miss. Here, in a database of its own with enough sessions that a sequential
scan costs more than an index scan, each statement form the list route can send is
prepared, and the plan Postgres keeps under `plan_cache_mode = force_generic_plan` must
read `sessions` through an index, with no sequential scan. Each form's answer is checked
against the same filters applied in Python. The freshness query every cold list runs
after it must read only the owned sessions, through an index.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from yarl import URL

from shared.db import sessions as sessions_db
from shared.db.migrate import migrate

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SESSIONS = 30_000
WORKSPACES = 60
CHILDREN = 200
WORKSPACE = "plan-ws-7"
LIMIT = 50


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def loaded_db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A migrated database of its own: SESSIONS sessions over WORKSPACES workspaces,
    CHILDREN of them children of one parent, some with live and some with lapsed leases."""
    name = f"routa_plans_{uuid.uuid4().hex[:8]}"
    url = str(URL(database_url).with_path(f"/{name}"))
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO workspaces (id, title)"
            " SELECT 'plan-ws-' || i, 'plan' FROM generate_series(0, $1 - 1) i",
            WORKSPACES,
        )
        await conn.execute(
            """
            INSERT INTO sessions (session_id, workspace_id, name, cwd, provider,
                                  acp_status, status, owner_instance_id,
                                  lease_expires_at, created_at, last_activity)
            SELECT gen_random_uuid(), 'plan-ws-' || (i % $2), 's' || i, '/w', 'echo',
                   'ready',
                   CASE i % 70 WHEN 0 THEN 'active' WHEN 7 THEN 'idle'
                        ELSE 'closed' END,
                   CASE WHEN i % 70 IN (0, 7) THEN 'plan-owner' END,
                   CASE WHEN i % 70 NOT IN (0, 7) THEN NULL
                        WHEN (i / 70) % 2 = 0 THEN now() + interval '1 hour'
                        ELSE now() - interval '1 hour' END,
                   now() - make_interval(secs => $1 - i),
                   now() - make_interval(secs => $1 - i)
            FROM generate_series(1, $1) i
            """,
            SESSIONS,
            WORKSPACES,
        )
        await conn.execute(
            """
            UPDATE sessions SET parent_session_id = p.session_id
            FROM (SELECT session_id FROM sessions ORDER BY created_at LIMIT 1) p
            WHERE sessions.session_id IN (
                SELECT session_id FROM sessions ORDER BY created_at DESC LIMIT $1)
            """,
            CHILDREN,
        )
        await conn.execute("ANALYZE sessions")
        yield conn
    finally:
        await conn.close()
        admin = await asyncpg.connect(str(URL(database_url).with_path("/postgres")))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _literal(value: Any) -> str:
    """An EXECUTE argument for this test's own values (ids, statuses, ints)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _forms(
    parent: uuid.UUID,
) -> list[tuple[str | None, uuid.UUID | None, str | None, int | None]]:
    """Every filter combination of GET /api/sessions, but a status filter alone without a
    limit: that one answers with every session of one status (most of the table for
    closed), which takes reading the table whatever the plan."""
    forms = []
    for w, p, s, n in itertools.product((False, True), repeat=4):
        if s and not (w or p or n):
            continue
        forms.append(
            (
                WORKSPACE if w else None,
                parent if p else None,
                "closed" if s else None,
                LIMIT if n else None,
            )
        )
    return forms


async def _parent(conn: asyncpg.Connection) -> uuid.UUID:
    value = await conn.fetchval(
        "SELECT parent_session_id FROM sessions WHERE parent_session_id IS NOT NULL LIMIT 1"
    )
    assert isinstance(value, uuid.UUID)
    return value


async def test_every_list_form_has_an_index_plan_when_generic(
    loaded_db: asyncpg.Connection,
) -> None:
    conn = loaded_db
    parent = await _parent(conn)
    failures = []
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        for i, form in enumerate(_forms(parent)):
            sql, args = sessions_db.list_statement(*form)
            await conn.execute(f"PREPARE list_form_{i} AS {sql}")
            call = f"list_form_{i}"
            if args:
                call += "(" + ", ".join(_literal(a) for a in args) + ")"
            explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {call}")
            plan = json.loads(explained)[0]["Plan"]
            nodes = list(_nodes(plan))
            seq = [n for n in nodes if n["Node Type"] == "Seq Scan"]
            index_names = {n["Index Name"] for n in nodes if "Index Name" in n}
            if seq or not index_names:
                failures.append((form, [n["Node Type"] for n in nodes]))
            await conn.execute(f"DEALLOCATE list_form_{i}")
    finally:
        await conn.execute("RESET plan_cache_mode")
    assert not failures, f"forms without an index plan: {failures}"


async def test_list_freshness_reads_only_owned_sessions(
    loaded_db: asyncpg.Connection,
) -> None:
    """Every cold list also asks when the first live lease runs out: an index read of the
    few owned sessions, not a scan of all of them."""
    explained = await loaded_db.fetchval(
        f"EXPLAIN (FORMAT JSON) {sessions_db.LIST_FRESHNESS}"
    )
    nodes = list(_nodes(json.loads(explained)[0]["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    assert {n["Index Name"] for n in nodes if "Index Name" in n}, nodes
    live = await loaded_db.fetchrow(
        "SELECT min(lease_expires_at) AS first, bool_or(status = 'active') AS active"
        " FROM sessions WHERE status <> 'closed' AND lease_expires_at >= now()"
    )
    lease_left, any_active = await sessions_db.list_freshness(loaded_db)
    assert lease_left is not None
    assert 3000 < lease_left <= 3600
    assert live["first"] is not None
    assert any_active is live["active"] is True


async def test_a_workspace_list_freshness_reads_only_its_owned_sessions(
    loaded_db: asyncpg.Connection,
) -> None:
    """A list of one workspace is bounded by that workspace's leases and turns only (a turn
    elsewhere must not end its cache entry within a second), through the index on
    (workspace, lease) of owned sessions."""
    explained = await loaded_db.fetchval(
        f"EXPLAIN (FORMAT JSON) {sessions_db.LIST_FRESHNESS_WORKSPACE}", WORKSPACE
    )
    nodes = list(_nodes(json.loads(explained)[0]["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    assert "sessions_workspace_lease_idx" in {
        n["Index Name"] for n in nodes if "Index Name" in n
    }, nodes
    for workspace_id in (WORKSPACE, "plan-ws-0", "plan-ws-unknown"):
        live = await loaded_db.fetchrow(
            "SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 AS first,"
            " bool_or(status = 'active') AS active FROM sessions"
            " WHERE workspace_id = $1 AND status <> 'closed' AND lease_expires_at >= now()",
            workspace_id,
        )
        lease_left, any_active = await sessions_db.list_freshness(
            loaded_db, workspace_id
        )
        if live["first"] is None:
            assert lease_left is None, workspace_id
        else:
            assert lease_left is not None
            assert abs(lease_left - live["first"]) < 60, workspace_id
        assert any_active is bool(live["active"]), workspace_id
    # the data holds both cases: a workspace with a turn and one without
    answers = {
        (await sessions_db.list_freshness(loaded_db, f"plan-ws-{i}"))[1]
        for i in range(WORKSPACES)
    }
    assert answers == {True, False}


async def test_every_list_form_answers_its_filters(
    loaded_db: asyncpg.Connection,
) -> None:
    """The forms select and order what the filters say (effective status, newest first)."""
    conn = loaded_db
    parent = await _parent(conn)
    rows = await conn.fetch(
        f"""
        SELECT session_id, workspace_id, parent_session_id, created_at,
               {sessions_db.EFFECTIVE_STATUS} AS status
        FROM sessions
        """
    )
    forms = [
        *_forms(parent),
        (None, None, "closed", None),
        (WORKSPACE, None, "idle", None),
        (None, None, "active", LIMIT),
    ]
    for workspace_id, parent_id, status, limit in forms:
        expected = sorted(
            (
                r
                for r in rows
                if (workspace_id is None or r["workspace_id"] == workspace_id)
                and (parent_id is None or r["parent_session_id"] == parent_id)
                and (status is None or r["status"] == status)
            ),
            key=lambda r: (-_epoch(r["created_at"]), r["session_id"]),
        )[:limit]
        got = await sessions_db.list_sessions(
            conn,
            workspace_id=workspace_id,
            parent_session_id=parent_id,
            status=status,
            limit=limit,
        )
        form = (workspace_id, parent_id, status, limit)
        assert [s.session_id for s in got] == [
            str(r["session_id"]) for r in expected
        ], form
        assert expected, f"the data leaves form {form} empty: it proves nothing"


def _epoch(at: datetime) -> float:
    return at.timestamp()
