"""Forward-only `.sql` migrations, applied at start-up under an advisory lock.

Both processes call `migrate()` from their first cleanup context; the lock makes concurrent
starts safe. Each file runs in one transaction with its `schema_migrations` row, and a
recorded file whose checksum changed stops the start-up: an applied file is never edited.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

from shared.db.connect import ensure_database

logger = logging.getLogger(__name__)

# Arbitrary constant shared by every process of this product.
MIGRATION_LOCK_ID = 0x524F555441  # "ROUTA"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations() -> list[Migration]:
    folder = resources.files("shared.db") / "migrations"
    files = sorted(
        (f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    return [Migration(f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in files]


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing on `conn`; returns the versions applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        recorded = {r["version"]: r["checksum"] for r in rows}
        for migration in load_migrations():
            known = recorded.get(migration.version)
            if known is not None:
                if known != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            applied_now.append(migration.version)
            logger.info("applied migration %s", migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now


async def migrate(database_url: str) -> list[str]:
    """Create the database when missing, then apply pending migrations."""
    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`routa-migrate`: apply migrations to DATABASE_URL and exit."""
    from shared.cli import SETTINGS_EPILOG, parser
    from shared.settings import load_settings

    cli = parser(
        "routa-migrate",
        "Create the database when it is missing and apply the pending migrations, "
        "then exit (the processes also do this at start).",
        SETTINGS_EPILOG,
    )
    cli.add_argument("--database-url", help="the database (env DATABASE_URL)")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    overrides = {"database_url": args.database_url} if args.database_url else None
    settings = load_settings("routa-migrate", overrides)
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidAuthorizationSpecificationError,
    ) as err:
        # the server named by DATABASE_URL does not answer: one line, not a traceback
        sys.stderr.write(
            f"routa-migrate: DATABASE_URL: Postgres does not answer "
            f"({err.__class__.__name__}: {err})\n"
        )
        raise SystemExit(1) from None
    sys.stdout.write(f"applied: {', '.join(applied) or 'nothing (up to date)'}\n")


if __name__ == "__main__":
    main()
