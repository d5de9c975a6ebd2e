"""The api_tokens table through `routa-tokens`: hashed storage, auth on, revoke within the cache window."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

from services.query.app import create_app
from shared.db import tokens
from shared.db.connect import create_pool
from tests.security.conftest import bearer


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.tokens_cli",
            "--database-url",
            database_url,
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli(database_url: str, *args: str) -> str:
    return run_cli(database_url, *args).stdout.strip()


async def test_cli_create_list_revoke(
    private_database_url, make_settings, aiohttp_client
):
    # a database of its own: the token turns auth on for good there
    db_url = private_database_url
    pool = await create_pool(db_url, min_size=1, max_size=2)
    try:
        ws_a, ws_b = f"ws-a-{uuid.uuid4().hex[:8]}", f"ws-b-{uuid.uuid4().hex[:8]}"
        for ws in (ws_a, ws_b):
            await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", ws)
        token = await asyncio.to_thread(cli, db_url, "create", "-w", ws_a, "-l", "t1")
        token_hash = tokens.hash_token(token)
        # stored hashed only
        stored = await pool.fetchrow(
            "SELECT * FROM api_tokens WHERE token_hash = $1", token_hash
        )
        assert stored is not None
        assert token not in str(dict(stored))
        listing = await asyncio.to_thread(cli, db_url, "list")
        assert token_hash[:12] in listing
        assert token not in listing
    finally:
        await pool.close()
    # the table alone turns auth on
    settings = make_settings(database_url=db_url, auth_cache_ttl=0.2)
    plain = await aiohttp_client(create_app(settings))
    assert (await plain.get("/api/workspaces")).status == 401
    assert (await plain.get("/healthz")).status == 200
    # with an AUTH_TOKENS token too: both kinds work side by side
    settings = make_settings(
        database_url=db_url, auth_cache_ttl=0.2, auth_tokens=f"env-token={ws_b}"
    )
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/api/workspaces")).status == 401
    resp = await client.get("/api/workspaces", headers=bearer(token))
    assert resp.status == 200
    assert [w["id"] for w in (await resp.json())["workspaces"]] == [ws_a]
    assert (
        await client.get(f"/api/notes?workspaceId={ws_b}", headers=bearer(token))
    ).status == 403
    resp = await client.get("/api/workspaces", headers=bearer("env-token"))
    assert [w["id"] for w in (await resp.json())["workspaces"]] == [ws_b]
    out = await asyncio.to_thread(cli, db_url, "revoke", token_hash[:12])
    assert out == f"revoked {token_hash[:12]}"
    # the cache window (AUTH_CACHE_TTL, 0.2 s here) passes, then the token is refused
    async with asyncio.timeout(10):
        while (
            await client.get("/api/workspaces", headers=bearer(token))
        ).status != 401:
            await asyncio.sleep(0.05)
