"""Every entry point parses its flags (issue 15 item 2): `--help` and `--version` print and
exit 0 without doing anything, a flag overrides its environment variable."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tomllib
import uuid
from pathlib import Path

import asyncpg
import pytest
from yarl import URL

from shared.cli import SERVICE_FLAGS, overrides, service_parser, version
from shared.settings import load_settings
from tests.conftest import _server_url

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # hang guard only: a command that starts instead of printing is killed


def _entry_points() -> dict[str, list[str]]:
    """Every console script of pyproject.toml (run through its `main`) and `python -m`."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    commands = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        code = (
            f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()"
        )
        commands[name] = ["-c", code]
    commands["python -m services.gateway"] = ["-m", "services.gateway"]
    commands["python -m services.query"] = ["-m", "services.query"]
    return commands


COMMANDS = _entry_points()
# what each prints as its program name
PROGRAMS = {
    "python -m services.gateway": "routa-gateway",
    "python -m services.query": "routa-query",
}


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(WAIT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{args} did not exit: {out.decode()} {err.decode()}"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _database_exists(name: str) -> bool:
    conn = await asyncpg.connect(_server_url())
    try:
        return bool(
            await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        )
    finally:
        await conn.close()


def test_every_console_script_is_covered():
    assert {"routa-gateway", "routa-query", "routa-migrate", "routa-dev"} <= set(
        COMMANDS
    )
    assert {"routa-tokens", "routa-echo-agent"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
async def test_help_prints_usage_and_does_nothing(name, tmp_path):
    database = f"routa_help_{uuid.uuid4().hex[:10]}"
    # a port held by this test: a command that tried to serve would fail to bind it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {
            **os.environ,
            "DATABASE_URL": str(URL(_server_url()).with_path(f"/{database}")),
            "PORT": str(port),
            "ORIGIN_PORT": str(port),
            "DATA_DIR": str(tmp_path / "data"),
        }
        code, out, err = await _run([*COMMANDS[name], "--help"], env)
    program = PROGRAMS.get(name, name)
    assert code == 0, err
    assert out.startswith(f"usage: {program} "), out
    assert "--version" in out
    assert "Traceback" not in err
    assert not await _database_exists(database)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
async def test_version(name):
    code, out, err = await _run([*COMMANDS[name], "--version"], dict(os.environ))
    assert code == 0, err
    assert out.strip() == f"{PROGRAMS.get(name, name)} {version()}"


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("PORT", "5000")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    args = service_parser("routa-gateway", "", 8001).parse_args(
        ["--port", "6001", "--log-level", "debug", "--instance-id", "gw-7"]
    )
    settings = load_settings("routa-gateway", overrides(args, *SERVICE_FLAGS))
    assert settings.port == 6001
    assert settings.log_level == "DEBUG"
    assert settings.instance_id == "gw-7"
    assert settings.host == "0.0.0.0"  # no flag: the environment's


def test_a_bad_flag_is_one_usage_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        service_parser("routa-gateway", "", 8001).parse_args(["--port", "http"])
    assert exit_.value.code == 2
    assert "argument --port: not a port number: 'http'" in capsys.readouterr().err
