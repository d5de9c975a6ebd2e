"""Structured logs of a real gateway process: JSON lines carrying request_id and session_id."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RUN_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # hang guard only


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


@pytest.fixture
async def gateway_process(database_url, redis_url, tmp_path):
    """`python -m services.gateway` with LOG_FORMAT=json; yields (base url, log file)."""
    port = _free_port()
    log = tmp_path / "gateway.log"
    (tmp_path / "data" / "workspaces").mkdir(parents=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-{RUN_ID}",
        "DATA_DIR": str(tmp_path / "data"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "INSTANCE_ID": f"obs-{uuid.uuid4().hex[:8]}",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.gateway",
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT):
            while True:
                assert proc.returncode is None, log.read_text()
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        yield base, log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(WAIT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _rpc(http, base, request_id, method, params):
    async with http.post(
        f"{base}/api/acp",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        headers={"X-Request-Id": request_id},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == request_id
        return await resp.json()


async def test_json_logs_carry_request_and_session_ids(gateway_process, workspace_id):
    base, log = gateway_process
    new_id, prompt_id = f"req-{uuid.uuid4().hex}", f"req-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        created = await _rpc(
            http, base, new_id, "session/new", {"workspaceId": workspace_id}
        )
        sid = created["result"]["sessionId"]
        # the reply may be a stop reason or an agent error: either way it is logged
        await _rpc(
            http, base, prompt_id, "session/prompt", {"sessionId": sid, "prompt": "hi"}
        )

    def matching(request_id: str) -> list[dict]:
        return [
            line
            for line in _json_lines(log)
            if line.get("request_id") == request_id and line.get("session_id") == sid
        ]

    async with asyncio.timeout(WAIT):
        while not (matching(new_id) and matching(prompt_id)):
            await asyncio.sleep(0.05)
    line = matching(prompt_id)[0]
    assert line["route"] == "/api/acp"
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert {"timestamp", "level", "event"} <= set(line)
    # probes stay out of the access log
    assert not any(entry.get("route") == "/readyz" for entry in _json_lines(log))
