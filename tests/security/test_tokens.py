"""The api_tokens table through `routa-tokens`: hashed storage, auth on, revoke within the cache window."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from services.query.app import create_app
from shared.db import tokens
from tests.security.conftest import bearer


def cli(database_url: str, *args: str) -> str:
    out = subprocess.run(
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
    return out.stdout.strip()


async def test_cli_create_list_revoke(
    database_url, make_settings, aiohttp_client, pool, two_workspaces
):
    ws_a, ws_b = two_workspaces
    token = await asyncio.to_thread(cli, database_url, "create", "-w", ws_a, "-l", "t1")
    token_hash = tokens.hash_token(token)
    try:
        # stored hashed only
        stored = await pool.fetchrow(
            "SELECT * FROM api_tokens WHERE token_hash = $1", token_hash
        )
        assert stored is not None
        assert token not in str(dict(stored))
        listing = await asyncio.to_thread(cli, database_url, "list")
        assert token_hash[:12] in listing
        assert token not in listing
        # the table alone turns auth on
        plain = await aiohttp_client(create_app(make_settings(auth_cache_ttl=0.2)))
        assert (await plain.get("/api/workspaces")).status == 401
        assert (await plain.get("/healthz")).status == 200
        # with an AUTH_TOKENS token too, so that auth stays on after the revoke
        settings = make_settings(auth_cache_ttl=0.2, auth_tokens=f"env-token={ws_b}")
        client = await aiohttp_client(create_app(settings))
        assert (await client.get("/api/workspaces")).status == 401
        resp = await client.get("/api/workspaces", headers=bearer(token))
        assert resp.status == 200
        assert [w["id"] for w in (await resp.json())["workspaces"]] == [ws_a]
        assert (
            await client.get(f"/api/notes?workspaceId={ws_b}", headers=bearer(token))
        ).status == 403
        out = await asyncio.to_thread(cli, database_url, "revoke", token_hash[:12])
        assert out == f"revoked {token_hash[:12]}"
        # the cache window (AUTH_CACHE_TTL, 0.2 s here) passes, then the token is refused
        async with asyncio.timeout(10):
            while (
                await client.get("/api/workspaces", headers=bearer(token))
            ).status != 401:
                await asyncio.sleep(0.05)
    finally:
        # an active row turns auth on for every app of this test run: never leave one
        await tokens.revoke(pool, token_hash)
