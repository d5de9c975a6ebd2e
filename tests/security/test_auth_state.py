"""Auth never switches itself off (issue 12, defect 2): once a token was created it stays
required after every token is revoked, across restarts, until AUTH=off; each state is logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.keys import HUB
from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from shared.db import tokens
from tests.security.conftest import bearer
from tests.security.test_tokens import cli, run_cli

TTL = 0.2  # AUTH_CACHE_TTL of every app here
AUTH_LOGGER = "services.common.auth"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == AUTH_LOGGER and r.levelno >= logging.WARNING
    ]


async def anonymous_session_new(gw) -> int:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "session/new",
        "params": {"workspaceId": "default"},
    }
    return (await gw.post("/api/acp", json=body)).status


async def test_revoking_the_last_token_keeps_auth_on(
    private_database_url, make_settings, aiohttp_client, cwd_root, caplog
):
    caplog.set_level(logging.INFO, logger=AUTH_LOGGER)
    db_url = private_database_url

    def settings(**overrides):
        return make_settings(database_url=db_url, auth_cache_ttl=TTL, **overrides)

    # AUTH=on forces auth on before any token exists
    forced = await aiohttp_client(create_query(settings(auth="on")))
    assert (await forced.get("/api/workspaces")).status == 401
    # nothing configured: off, and the start-up line says so at warning level
    caplog.clear()
    query = await aiohttp_client(create_query(settings()))
    assert any(m.startswith("auth off") for m in warnings_of(caplog)), caplog.text
    assert (await query.get("/api/workspaces")).status == 200
    gw = await aiohttp_client(create_gateway(settings()))
    async with asyncio.timeout(10):
        await gw.app[HUB].connected.wait()

    caplog.clear()
    token = await asyncio.to_thread(cli, db_url, "create", "-w", "default")
    token_id = tokens.hash_token(token)[:12]
    # the running processes turn auth on within the cache window, and say so
    async with asyncio.timeout(10):
        while (await query.get("/api/workspaces")).status != 401:
            await asyncio.sleep(0.05)
        while await anonymous_session_new(gw) != 401:
            await asyncio.sleep(0.05)
    turned_on = [m for m in warnings_of(caplog) if m.startswith("auth turned ON")]
    assert len(turned_on) == 2, caplog.text  # one line per process
    assert (await query.get("/api/workspaces", headers=bearer(token))).status == 200

    revoked = await asyncio.to_thread(run_cli, db_url, "revoke", token_id)
    assert revoked.stdout.strip() == f"revoked {token_id}"
    assert "auth stays on" in revoked.stderr
    # each pass waits out a cache window, so the revoke has been read: the token is refused
    # and anonymous calls stay refused too (the old code re-read "is any token active?"
    # after each window and opened everything to anyone)
    for _ in range(4):
        await asyncio.sleep(TTL * 1.5)
        assert (await query.get("/api/workspaces")).status == 401
        assert (await query.get("/api/notes?workspaceId=default")).status == 401
        assert await anonymous_session_new(gw) == 401
        assert (await query.get("/api/workspaces", headers=bearer(token))).status == 401
    assert (await query.get("/healthz")).status == 200

    # a restart keeps it on: the flag outlives every token
    caplog.clear()
    restarted = await aiohttp_client(create_query(settings()))
    assert (await restarted.get("/api/workspaces")).status == 401
    assert not any(m.startswith("auth off") for m in warnings_of(caplog))
    assert any(r.getMessage().startswith("auth on") for r in caplog.records), (
        caplog.text
    )

    # only the operator turns it off, explicitly, and that is a warning too
    caplog.clear()
    off = await aiohttp_client(create_query(settings(auth="off")))
    assert any(m.startswith("auth OFF (AUTH=off)") for m in warnings_of(caplog))
    assert (await off.get("/api/workspaces")).status == 200
