"""Real service processes for the observability tests: JSON logs to a file, a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import RUN_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # hang guard only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


async def wait_line(path: Path, predicate) -> dict:
    """The first JSON log line for which `predicate` holds (waits for it)."""
    async with asyncio.timeout(WAIT):
        while True:
            for line in json_lines(path):
                if predicate(line):
                    return line
            await asyncio.sleep(0.05)


@dataclass
class Service:
    base: str
    log: Path
    proc: asyncio.subprocess.Process

    async def stop(self) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL after the hang guard)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(WAIT):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"did not stop: {self.log.read_text()}") from None


@contextlib.asynccontextmanager
async def service_process(
    module: str,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    **env_extra: str,
) -> AsyncIterator[Service]:
    """`python -m <module>` with LOG_FORMAT=json, ready (/readyz 200) when yielded."""
    port = free_port()
    name = module.rsplit(".", 1)[-1]
    log = tmp_path / f"{name}-{port}.log"
    data = tmp_path / "data"
    (data / "workspaces").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-{RUN_ID}",
        "DATA_DIR": str(data),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "INSTANCE_ID": f"obs-{uuid.uuid4().hex[:8]}",
        **env_extra,
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    service = Service(f"http://127.0.0.1:{port}", log, proc)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT):
            while True:
                assert proc.returncode is None, log.read_text()
                try:
                    async with http.get(f"{service.base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        yield service
    finally:
        if proc.returncode is None:
            await service.stop()
