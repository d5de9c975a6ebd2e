"""`routa-dev`: the whole system on http://localhost:3000 from one command.

Uses the Postgres and Redis named by DATABASE_URL / REDIS_URL; a set variable whose server
does not answer stops the command (one line naming it). Private servers from PyPI wheels
under DATA_DIR only when a variable is unset and its default does not answer, or with
--embedded. Then one gateway, one query service and the origin (nginx when installed, else
the aiohttp router). Like honcho: when one child dies, the rest is stopped. Ctrl-C / SIGTERM
stops children first, then the embedded servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from yarl import URL

from services.devtools import nginx
from services.devtools.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedStartError,
    free_port,
    port_is_free,
    postgres_problem,
    redis_problem,
)
from services.devtools.origin import create_origin_app
from services.devtools.upstreams import Backend, Upstreams
from shared import cli
from shared.settings import load_settings

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def say(line: str) -> None:
    """The run command talks to a terminal, not to a log pipeline."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _env_int(name: str, default: int) -> int:
    """An integer variable; anything else is one line naming it and exit 2 (as Settings)."""
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        sys.stderr.write(
            f"routa-dev: invalid setting {name}={value!r}: must be an integer\n"
        )
        raise SystemExit(2) from None


class ServerUnreachable(Exception):
    """A server named explicitly (DATABASE_URL / REDIS_URL) does not answer."""


def _unreachable(name: str, url: str, problem: str) -> ServerUnreachable:
    return ServerUnreachable(
        f"{name}={_redact(url)} does not answer ({problem}); "
        "unset it to use a private server, or pass --embedded"
    )


@dataclass(frozen=True, slots=True)
class Options:
    data_dir: Path
    database_url: str
    redis_url: str
    origin_host: str
    origin_port: int
    gateway_port: int
    query_port: int
    origin: str  # "auto" | "nginx" | "aiohttp"
    # DATABASE_URL / REDIS_URL given explicitly: never replaced by an embedded server
    database_url_set: bool = False
    redis_url_set: bool = False
    embedded: bool = False  # --embedded: private servers, whatever the variables say

    @classmethod
    def parse(cls, argv: Sequence[str] | None) -> Options:
        # flags first: --help and --version return before any setting is read
        parser = cli.parser(
            "routa-dev",
            "Run Postgres, Redis, one gateway, one query service "
            "and the origin on http://localhost:3000.",
            cli.SETTINGS_EPILOG,
        )
        parser.add_argument(
            "--port", type=int, help="origin port (env ORIGIN_PORT, default 3000)"
        )
        parser.add_argument(
            "--host", help="origin host (env ORIGIN_HOST, default localhost)"
        )
        parser.add_argument(
            "--gateway-port",
            type=int,
            help="gateway port, a free one if taken (env GATEWAY_PORT, default 8001)",
        )
        parser.add_argument(
            "--query-port",
            type=int,
            help="query service port, a free one if taken (env QUERY_PORT, default 8002)",
        )
        parser.add_argument(
            "--origin",
            choices=["auto", "nginx", "aiohttp"],
            help="nginx when installed (auto), or force one (env ORIGIN, default auto)",
        )
        parser.add_argument(
            "--embedded",
            action="store_true",
            help="start private Postgres and Redis servers even when DATABASE_URL / "
            "REDIS_URL are set (without it, a set variable whose server does not "
            "answer stops the command)",
        )
        args = parser.parse_args(argv)
        defaults = load_settings("routa-dev")
        origin = args.origin or os.environ.get("ORIGIN") or "auto"
        if origin not in ("auto", "nginx", "aiohttp"):
            sys.stderr.write(
                f"routa-dev: invalid setting ORIGIN={origin!r}: "
                "must be auto, nginx or aiohttp\n"
            )
            raise SystemExit(2)

        def pick(flag: int | None, name: str, default: int) -> int:
            return flag if flag is not None else _env_int(name, default)

        return cls(
            data_dir=defaults.data_dir.resolve(),
            database_url=defaults.database_url,
            redis_url=defaults.redis_url,
            origin_host=args.host or os.environ.get("ORIGIN_HOST", "localhost"),
            origin_port=pick(args.port, "ORIGIN_PORT", 3000),
            gateway_port=pick(args.gateway_port, "GATEWAY_PORT", 8001),
            query_port=pick(args.query_port, "QUERY_PORT", 8002),
            origin=origin,
            database_url_set="database_url" in defaults.model_fields_set,
            redis_url_set="redis_url" in defaults.model_fields_set,
            embedded=args.embedded,
        )


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]


@dataclass
class DevServer:
    """Owns every process it starts and stops them in reverse dependency order."""

    options: Options
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)
    origin_runner: web.AppRunner | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)

    async def _ensure_postgres(self) -> str:
        """DATABASE_URL's server; an embedded one only when the variable is unset (and
        the default does not answer) or with --embedded: an explicit setting is never
        silently replaced, so writes never land where the operator did not point them."""
        opts = self.options
        url = opts.database_url
        if not opts.embedded:
            problem = await postgres_problem(url)
            if problem is None:
                return url
            if opts.database_url_set:
                raise _unreachable("DATABASE_URL", url, problem)
            say(f"postgres at {_redact(url)} does not answer; starting an embedded one")
        self.postgres = EmbeddedPostgres(opts.data_dir / "postgres" / "data")
        await asyncio.to_thread(self.postgres.start)
        database = URL(url).path.lstrip("/") or "routa"
        return self.postgres.url(database)

    async def _ensure_redis(self) -> str:
        """REDIS_URL's server, under the same rule as Postgres."""
        opts = self.options
        url = opts.redis_url
        if not opts.embedded:
            problem = await redis_problem(url)
            if problem is None:
                return url
            if opts.redis_url_set:
                raise _unreachable("REDIS_URL", url, problem)
            say(f"redis at {_redact(url)} does not answer; starting an embedded one")
        self.redis = EmbeddedRedis(opts.data_dir / "redis")
        await asyncio.to_thread(self.redis.start)
        return self.redis.url

    async def _check_explicit(self) -> None:
        """ServerUnreachable for the first set variable whose server does not answer."""
        opts = self.options
        checks: list[tuple[str, str, Callable[[str], Awaitable[str | None]]]] = []
        if opts.database_url_set:
            checks.append(("DATABASE_URL", opts.database_url, postgres_problem))
        if opts.redis_url_set:
            checks.append(("REDIS_URL", opts.redis_url, redis_problem))
        problems = await asyncio.gather(*(check(url) for _, url, check in checks))
        for (name, url, _), problem in zip(checks, problems, strict=True):
            if problem is not None:
                raise _unreachable(name, url, problem)

    async def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to us; we stop children in order
        )
        child = Child(name, proc, asyncio.create_task(_pump(name, proc)))
        self.children.append(child)
        return child

    async def _start_origin(self, upstreams: Upstreams, env: dict[str, str]) -> str:
        host, port = self.options.origin_host, self.options.origin_port
        binary = nginx.nginx_binary()
        if self.options.origin == "nginx" and binary is None:
            raise SystemExit("--origin nginx: nginx is not on PATH")
        if binary is not None and self.options.origin != "aiohttp":
            health_port = free_port()
            await self._serve(
                create_origin_app(upstreams, proxy_all=False), "127.0.0.1", health_port
            )
            prefix = self.options.data_dir / "nginx"
            listen = [f"127.0.0.1:{port}"]
            if host in {"localhost", "::1"} and _ipv6_loopback():
                listen.append(f"[::1]:{port}")
            text = nginx.render_config(
                prefix, listen, upstreams, f"127.0.0.1:{health_port}"
            )
            conf = nginx.write_config(prefix, text)
            await self._spawn("nginx", nginx.command(binary, prefix, conf), env)
            return "nginx"
        await self._serve(create_origin_app(upstreams), host, port)
        return "aiohttp router"

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self.origin_runner = runner
        await web.TCPSite(runner, host, port).start()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # SIGHUP too: closing the terminal must not orphan children in their own sessions
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop_requested.set)
        try:
            return await self._run()
        except EmbeddedStartError as err:
            say(f"could not start an embedded server: {err}")
            return 1
        except ServerUnreachable as err:
            sys.stderr.write(f"routa-dev: {err}\n")
            return 1
        finally:
            await self._shutdown()

    async def _run(self) -> int:
        opts = self.options
        if not port_is_free(opts.origin_port):
            say(f"port {opts.origin_port} is taken; set ORIGIN_PORT or --port")
            return 2
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        # both checked before anything starts: an explicit server that does not answer
        # stops the command before an embedded one for the other is started
        if not opts.embedded:
            await self._check_explicit()
        database_url, redis_url = await asyncio.gather(
            self._ensure_postgres(), self._ensure_redis()
        )
        gateway_port = free_port(opts.gateway_port)
        query_port = free_port(opts.query_port)
        if query_port == gateway_port:
            query_port = free_port()
        base_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(opts.data_dir),
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        py = sys.executable
        await self._spawn(
            "gateway",
            [py, "-m", "services.gateway"],
            {**base_env, "PORT": str(gateway_port)},
        )
        await self._spawn(
            "query", [py, "-m", "services.query"], {**base_env, "PORT": str(query_port)}
        )
        upstreams = Upstreams(
            Backend("gateway", URL(f"http://127.0.0.1:{gateway_port}")),
            Backend("query", URL(f"http://127.0.0.1:{query_port}")),
        )
        kind = await self._start_origin(upstreams, base_env)
        origin = f"http://{opts.origin_host}:{opts.origin_port}"
        say(f"origin    {origin}  ({kind})")
        say(f"gateway   {upstreams.gateway.url}")
        say(f"query     {upstreams.query.url}")
        say(
            f"postgres  {_redact(database_url)}{'  (embedded)' if self.postgres else ''}"
        )
        say(f"redis     {_redact(redis_url)}{'  (embedded)' if self.redis else ''}")
        say(f"data dir  {opts.data_dir}")

        ready = asyncio.create_task(
            _wait_healthy(f"http://127.0.0.1:{opts.origin_port}")
        )
        stop = asyncio.create_task(self.stop_requested.wait())
        exits = {asyncio.create_task(c.proc.wait()): c for c in self.children}
        try:
            pending: set[asyncio.Task[object]] = {ready, stop, *exits}
            while True:
                done, pending = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    say("stopping")
                    return 0
                for task in done & set(exits):
                    child = exits[task]  # type: ignore[index]
                    say(
                        f"{child.name} exited with status {child.proc.returncode}; stopping the rest"
                    )
                    return 1
                if ready in done:
                    if ready.result():
                        say(f"ready: {origin}/healthz answers 200")
                    else:
                        say(
                            f"not healthy after {READY_TIMEOUT:.0f}s; still trying, see the logs above"
                        )
        finally:
            for task in (ready, stop, *exits):
                task.cancel()
            await asyncio.gather(ready, stop, *exits, return_exceptions=True)

    async def _shutdown(self) -> None:
        """Children first (SIGTERM, then SIGKILL after a grace), then origin, then embedded servers."""
        for child in self.children:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await child.proc.wait()
            except TimeoutError:
                say(f"{child.name} did not stop in {STOP_TIMEOUT:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await child.pump
        if self.origin_runner is not None:
            await self.origin_runner.cleanup()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)


async def _pump(name: str, proc: asyncio.subprocess.Process) -> None:
    """Copy a child's output to ours, each line prefixed with its name (as honcho does)."""
    assert proc.stdout is not None
    async for raw in proc.stdout:
        say(f"{name:<8}| {raw.decode(errors='replace').rstrip()}")


async def _wait_healthy(origin: str) -> bool:
    """True once the origin's /healthz answers 200 (it checks both backends)."""
    async with ClientSession(timeout=ClientTimeout(total=2)) as session:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while True:
                    try:
                        async with session.get(f"{origin}/healthz") as resp:
                            if resp.status == 200:
                                return True
                    except (ClientError, OSError, TimeoutError):
                        pass
                    await asyncio.sleep(0.2)
        except TimeoutError:
            return False


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if sep and at and ":" in userinfo:  # also redis+cluster://u:p@h1:1,h2:2
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}"
    if sep and at and scheme.startswith("redis"):
        return f"{scheme}://***@{hosts}"  # redis://secret@host: a password
    return url


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    options = Options.parse(argv)
    sys.exit(asyncio.run(DevServer(options).run()))


if __name__ == "__main__":
    main()
