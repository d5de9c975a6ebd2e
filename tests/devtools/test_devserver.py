"""`python -m services.devserver` end to end: real child processes, real origin, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from services.devtools.embedded import free_port, postgres_answers, redis_answers

pytestmark = pytest.mark.e2e

START_TIMEOUT = 60
STOP_TIMEOUT = 30


class DevRun:
    """One run-command process; its output is drained continuously so it never blocks."""

    def __init__(self, proc: asyncio.subprocess.Process, origin_port: int) -> None:
        self.proc = proc
        self.origin = f"http://127.0.0.1:{origin_port}"
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            async with self._new_line:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern)
        async with self._new_line:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if self._drain.done():
                    raise AssertionError(f"exited before {pattern!r}:\n{self.output}")
                await self._new_line.wait()

    async def stop(self, sig: int) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(STOP_TIMEOUT):
            code = await self.proc.wait()
            await self._drain
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._drain.cancel()


@pytest.fixture
async def start_dev(data_tmp: Path):
    runs: list[DevRun] = []

    async def _start(*args: str, **env: str) -> DevRun:
        origin_port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.devserver",
            "--port",
            str(origin_port),
            "--gateway-port",
            "0",
            "--query-port",
            "0",
            "--origin",
            "aiohttp",
            *args,
            env={
                **os.environ,
                "DATA_DIR": str(data_tmp / "data"),
                "REDIS_PREFIX": f"test-dev-{uuid.uuid4().hex[:8]}",
                **env,
            },
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        run = DevRun(proc, origin_port)
        runs.append(run)
        return run

    yield _start
    for run in runs:  # a failed test must not leave the stack running
        if run.proc.returncode is None:
            await run.stop(signal.SIGTERM)
        await run.kill()


async def _port_answers(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, OSError):
        return False


async def _get_json(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_serves_through_origin_and_stops_cleanly_on_sigint(
    start_dev, database_url, redis_url
):
    run = await start_dev(DATABASE_URL=database_url, REDIS_URL=redis_url)
    async with asyncio.timeout(START_TIMEOUT):
        await run.wait_for(r"^ready: ")
    gateway = (await run.wait_for(r"^gateway\s+(http://\S+)")).group(1)
    query = (await run.wait_for(r"^query\s+(http://\S+)")).group(1)
    assert "(embedded)" not in run.output

    status, body = await _get_json(f"{run.origin}/healthz")
    assert (status, body) == (200, {"ok": True, "service": "origin"})
    status, body = await _get_json(f"{run.origin}/api/sessions")
    assert status == 200, body
    assert isinstance(body["sessions"], list)

    assert await run.stop(signal.SIGINT) == 0, run.output
    assert "stopping" in run.output
    assert not await _port_answers(gateway)
    assert not await _port_answers(query)
    assert not await _port_answers(run.origin)


async def test_embedded_flag_starts_embedded_servers(start_dev):
    """--embedded: private servers even where DATABASE_URL / REDIS_URL name others."""
    run = await start_dev(
        "--embedded",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/routa",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    async with asyncio.timeout(START_TIMEOUT):
        await run.wait_for(r"^ready: ")
    pg_url = (await run.wait_for(r"^postgres\s+(\S+)\s+\(embedded\)")).group(1)
    redis_url = (await run.wait_for(r"^redis\s+(\S+)\s+\(embedded\)")).group(1)
    assert await postgres_answers(pg_url)
    assert await redis_answers(redis_url)

    status, body = await _get_json(f"{run.origin}/api/sessions")
    assert status == 200, body

    assert await run.stop(signal.SIGTERM) == 0, run.output
    # embedded servers are stopped after the children
    assert not await postgres_answers(pg_url)
    assert not await redis_answers(redis_url)


def _child_pid(parent: int, module: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and module.encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child {module} of {parent}")


async def test_stops_the_rest_when_a_child_dies(start_dev, database_url, redis_url):
    run = await start_dev(DATABASE_URL=database_url, REDIS_URL=redis_url)
    async with asyncio.timeout(START_TIMEOUT):
        await run.wait_for(r"^ready: ")
    query = (await run.wait_for(r"^query\s+(http://\S+)")).group(1)

    os.kill(_child_pid(run.proc.pid, "services.gateway"), signal.SIGKILL)

    async with asyncio.timeout(STOP_TIMEOUT):
        assert await run.proc.wait() == 1
        await run.wait_for(r"^gateway exited with status -9; stopping the rest")
    assert not await _port_answers(query)
