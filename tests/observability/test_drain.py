"""SIGTERM on a real gateway (issue 15 item 6): readiness answers 503 — the listener stays
open — while a running turn finishes; then the process exits. The drain is logged."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.gateway.rpcutil import kinds, wait_events, wait_ready
from tests.observability.procs import WAIT, json_lines, service_process

pytestmark = pytest.mark.e2e


async def _rpc(http, base, method, params):
    async with http.post(
        f"{base}/api/acp",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
    ) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_readiness_is_503_while_turns_drain(
    database_url, redis_url, tmp_path, pool, workspace_id
):
    async with (
        service_process("services.gateway", tmp_path, database_url, redis_url) as gw,
        aiohttp.ClientSession() as http,
    ):
        created = await _rpc(
            http, gw.base, "session/new", {"workspaceId": workspace_id}
        )
        sid = created["result"]["sessionId"]
        await wait_ready(pool, sid)
        prompt = asyncio.create_task(
            _rpc(
                http, gw.base, "session/prompt", {"sessionId": sid, "prompt": "/slow 5"}
            )
        )
        # the turn is running: the agent said something
        await wait_events(
            pool, sid, lambda evs: "agent_message_chunk" in kinds(evs)[-1:]
        )
        gw.proc.send_signal(signal.SIGTERM)

        # readiness turns 503 on the open listener (a refused connection fails here)
        async with asyncio.timeout(WAIT):
            while True:
                async with http.get(f"{gw.base}/readyz") as resp:
                    if resp.status == 503:
                        assert await resp.json() == {"error": "draining"}
                        break
                    assert resp.status == 200
                await asyncio.sleep(0.02)
        assert gw.proc.returncode is None
        # liveness still answers during the drain
        async with http.get(f"{gw.base}/healthz") as resp:
            assert resp.status == 200

        async with asyncio.timeout(WAIT):
            reply = await prompt
        assert reply["result"] == {"stopReason": "end_turn"}
        async with asyncio.timeout(WAIT):
            code = await gw.proc.wait()
        assert code == 0

    # after the exit nothing listens any more
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/readyz"):
            pass
    lines = json_lines(gw.log)
    started = [line for line in lines if line.get("event") == "drain started"]
    finished = [line for line in lines if line.get("event") == "drain finished"]
    assert len(started) == 1, lines
    assert started[0]["running_turns"] == 1
    assert started[0]["live_sessions"] == 1
    assert len(finished) == 1
    assert finished[0]["turns_finished"] == 1
    assert finished[0]["turns_cut_short"] == 0
    assert lines.index(started[0]) < lines.index(finished[0])
