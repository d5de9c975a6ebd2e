"""The internal-service examples of docs/api.md, run as written against a real gateway.

The Python blocks between the internal-services markers are extracted from docs/api.md and
run as scripts with this run's REDIS_URL / REDIS_PREFIX: the listener must see the session
that the commands-stream example creates.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from services.gateway.app import create_app
from services.gateway.keys import COMMAND_CONSUMER
from tests.gateway.rpcutil import wait_ready

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


def documented_examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    start = text.index("<!-- internal-services:start -->")
    end = text.index("<!-- internal-services:end -->")
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_api_md_has_both_examples() -> None:
    blocks = documented_examples()
    assert len(blocks) == 2
    assert "workspace_sessions" in blocks[0]
    assert "xadd" in blocks[1]
    assert "commands" in blocks[1]


@pytest.fixture
async def gateway(settings, aiohttp_client, cwd_root):
    client = await aiohttp_client(create_app(settings))
    assert COMMAND_CONSUMER in client.app
    return client


async def _readline(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        line = await proc.stdout.readline()
    assert line, "the example ended early"
    return line.decode().strip()


async def test_examples_run_against_a_gateway(
    gateway, settings, workspace_id, pool, tmp_path
):
    listen_src, submit_src = documented_examples()
    (tmp_path / "listen.py").write_text(listen_src)
    (tmp_path / "submit.py").write_text(submit_src)
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
        "WORKSPACE_ID": workspace_id,
        "PYTHONPATH": str(ROOT),
    }
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tmp_path / "listen.py"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert await _readline(listener) == "listening"
        submit = await asyncio.create_subprocess_exec(
            sys.executable,
            str(tmp_path / "submit.py"),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT):
            out, _ = await submit.communicate()
        assert submit.returncode == 0
        reply = json.loads(out)
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] == 1
        result = reply["result"]
        assert result["acpStatus"] == "connecting"
        assert result["ownerInstanceId"] == settings.instance_id
        sid = result["sessionId"]
        # the listener sees the session created, then its status changes
        first = (await _readline(listener)).split(" ")
        assert first[:2] == ["session:created", sid]
        assert "sessionId" in first[2].split(",")
        await wait_ready(pool, sid)
        while True:
            kind, seen, changes = (await _readline(listener)).split(" ")
            if kind == "session:updated" and "acpStatus" in changes.split(","):
                assert seen == sid
                break
    finally:
        listener.kill()
        await listener.wait()
