"""Real processes for the scale-out tests: gateways, query services, nginx, SSE subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROD_CONF = ROOT / "deploy" / "nginx" / "prod.conf"
WAIT = 60.0  # hang guard only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_nginx(
    gateways: list[int], queries: list[int], listen: int, prefix: Path
) -> str:
    """deploy/nginx/prod.conf with this test's upstreams, port and private paths.

    Everything else (locations, buffering, timeouts, retries) is the production file's.
    """
    text = PROD_CONF.read_text()

    def upstream(name: str, ports: list[int], text: str) -> str:
        servers = "".join(f"        server 127.0.0.1:{p} max_fails=0;\n" for p in ports)
        pattern = re.compile(
            rf"(upstream {name} \{{\n)((?:\s*server [^\n]*\n)+)", re.MULTILINE
        )
        out, n = pattern.subn(lambda m: m.group(1) + servers, text)
        assert n == 1, f"prod.conf: upstream {name} not found"
        return out

    text = upstream("gateway", gateways, text)
    text = upstream("query", queries, text)
    text, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1, "prod.conf: listen not found"
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    head = f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
    paths = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n    access_log off;\n" + paths, 1)
    return head + text


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        async with asyncio.timeout(timeout):
            while self.popen.poll() is None:
                await asyncio.sleep(0.05)
        return int(self.popen.returncode)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-3000:]
        return ""


def start_service(
    module: str, name: str, port: int, env: dict[str, str], logdir: Path
) -> Proc:
    log = logdir / f"{name}.log"
    full = {
        **os.environ,
        **env,
        "INSTANCE_ID": name,
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, port, popen, log)


def start_nginx(conf: Path, prefix: Path, port: int, logdir: Path) -> Proc:
    log = logdir / "nginx.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc("nginx", port, popen, log)


def stop(proc: Proc) -> None:
    """Teardown: SIGTERM, then SIGKILL the process group if it lingers."""
    if proc.alive():
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)


def service_env(
    settings: Settings, tmp_path: Path, tag: str, **extra: str
) -> dict[str, str]:
    """What the processes of one test share: this run's Postgres and Redis under a Redis
    prefix of their own (`tag` names the test in it), one data directory, a short
    shutdown and INFO logs. `extra` adds or overrides variables."""
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": f"{settings.redis_prefix}-{tag}-{uuid.uuid4().hex[:6]}",
        "DATA_DIR": str(tmp_path / "data"),
        "SHUTDOWN_TIMEOUT": "3",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class Services:
    """Named service processes of one test and the HTTP client that calls them."""

    http: aiohttp.ClientSession
    procs: dict[str, Proc]

    def url(self, name: str) -> str:
        return self.procs[name].url

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs.values())


@contextlib.asynccontextmanager
async def running_services(
    modules: Mapping[str, str], env: dict[str, str], logdir: Path
) -> AsyncIterator[Services]:
    """`modules` ({name: module}) each on a free port, yielded once all are ready.

    When they fail to start, their logs are printed for pytest to show with the error.
    On exit each is continued first (a test may have paused one with SIGSTOP, and a
    stopped process cannot act on SIGTERM), then stopped.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    services = Services(aiohttp.ClientSession(), {})
    try:
        for name, module in modules.items():
            services.procs[name] = start_service(module, name, free_port(), env, logdir)
        for proc in services.procs.values():
            await wait_ready(services.http, proc.url, "/readyz")
        yield services
    except BaseException:
        print(services.logs())  # noqa: T201 - shown by pytest when the test fails
        raise
    finally:
        await services.http.close()
        for proc in services.procs.values():
            proc.signal(signal.SIGCONT)
            stop(proc)


async def wait_ready(http: aiohttp.ClientSession, url: str, path: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url + path) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


async def rpc(
    http: aiohttp.ClientSession, url: str, method: str, params: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """(JSON-RPC reply, X-Instance-Id of the gateway that answered)."""
    body = {"jsonrpc": "2.0", "id": method, "method": method, "params": params}
    async with http.post(url + "/api/acp", json=body) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
        assert reply["id"] == method
        return reply, resp.headers.get("X-Instance-Id")


@dataclass
class Subscriber:
    """An SSE client that reconnects with Last-Event-ID whenever its stream ends or breaks."""

    http: aiohttp.ClientSession
    url: str
    session_id: str
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    connects: int = 0
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last(self) -> int:
        return self.events[-1][0] if self.events else 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            headers = {"Last-Event-ID": str(self.last)} if self.connects else {}
            params = {"sessionId": self.session_id}
            if not self.connects:
                params["replay"] = "all"
            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
                async with self.http.get(
                    self.url + "/api/acp",
                    params=params,
                    headers=headers,
                    timeout=timeout,
                ) as resp:
                    if resp.status != 200:
                        await asyncio.sleep(0.1)  # the balancer had no gateway yet
                        continue
                    self.connects += 1
                    self.served_by.append(resp.headers.get("X-Instance-Id", "?"))
                    await self._read(resp)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)  # like EventSource's retry, reconnect at once

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        event_id: str | None = None
        data: str | None = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n").rstrip("\r")
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                if event_id is not None and data is not None:
                    params = orjson.loads(data)["params"]
                    assert int(event_id) == self.last + 1, (
                        f"gap or repeat: {self.last} then {event_id}"
                    )
                    self.events.append((int(event_id), params))
                    self.changed.set()
                event_id = data = None

    async def wait_for(self, predicate: Any) -> None:
        assert self.task is not None
        async with asyncio.timeout(WAIT):
            while not predicate(self):
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait(
                    {waiter, self.task}, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if self.task.done():
                    self.task.result()  # an assertion in the reader fails the test

    def kinds(self) -> list[str]:
        return [e["update"]["sessionUpdate"] for _, e in self.events]
