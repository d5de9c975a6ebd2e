"""Migrations: applied once, concurrently safe under the advisory lock, checksums enforced."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import migrate as migrate_mod
from shared.db.migrate import Migration, MigrationError, apply_migrations, migrate


async def test_concurrent_migrations_apply_each_file_once(fresh_db: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_db) for _ in range(4)))
    applied = [v for r in results for v in r]
    expected = [m.version for m in migrate_mod.load_migrations()]
    assert sorted(applied) == sorted(expected)  # each version applied by exactly one
    conn = await asyncpg.connect(fresh_db)
    try:
        rows = await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY version"
        )
        assert [r["version"] for r in rows] == expected
        assert await conn.fetchval("SELECT title FROM workspaces WHERE id = 'default'")
    finally:
        await conn.close()
    assert await migrate(fresh_db) == []


async def test_changed_migration_refuses_to_start(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(fresh_db)
    original = migrate_mod.load_migrations()
    tampered = [
        Migration(original[0].version, original[0].sql + "\n-- edited"),
        *original[1:],
    ]
    monkeypatch.setattr(migrate_mod, "load_migrations", lambda: tampered)
    conn = await asyncpg.connect(fresh_db)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn)
    finally:
        await conn.close()
