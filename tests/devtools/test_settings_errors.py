"""Settings given explicitly (issue 12, defect 11), the commands run as subprocesses:
a malformed value is one line naming it and exit 2; a DATABASE_URL / REDIS_URL whose
server does not answer stops the command with one line naming it, never an embedded
server in its place.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from services.devtools.embedded import free_port
from tests.devtools.test_devserver import START_TIMEOUT

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
# the console scripts of pyproject.toml, as modules (same `main`)
COMMANDS = {
    "routa-gateway": ["services.gateway"],
    "routa-query": ["services.query"],
    "routa-dev": ["services.devserver", "--port", "0"],
    "routa-migrate": ["shared.db.migrate"],
}
MALFORMED = {
    "PROMPT_TIMEOUT": "abc",
    "DATABASE_URL": "mysql://user:secret@127.0.0.1/routa",
    "REDIS_URL": "http://127.0.0.1:6379/0",
    "LOG_LEVEL": "loud",
    "MAX_SESSIONS": "many",
}


async def _run(
    args: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); the process is killed if it outlives `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        # it went on instead of stopping: end it the way Ctrl-C would, then report
        proc.send_signal(2)
        try:
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
        raise AssertionError(
            f"{args} did not stop at once:\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    """The environment without any of our variables, DATA_DIR in a scratch dir."""
    ours = {
        "DATABASE_URL",
        "REDIS_URL",
        "PROMPT_TIMEOUT",
        "LOG_LEVEL",
        "MAX_SESSIONS",
        "PORT",
    }
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["DATA_DIR"] = str(tmp_path / "data")
    return env


# every command with two kinds of mistake; every kind with one command
CASES = [
    *((command, v) for command in COMMANDS for v in ("PROMPT_TIMEOUT", "DATABASE_URL")),
    *(
        ("routa-gateway", v)
        for v in MALFORMED
        if v not in ("PROMPT_TIMEOUT", "DATABASE_URL")
    ),
]


@pytest.mark.parametrize(("command", "variable"), CASES)
async def test_malformed_setting_is_one_line_and_exit_2(
    clean_env, command, variable
) -> None:
    env = {**clean_env, variable: MALFORMED[variable]}
    code, out, err = await _run(COMMANDS[command], env, timeout=60)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: invalid setting {variable}"), lines
    assert "secret" not in err  # a URL is never echoed (passwords)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "REDIS_URL"])
async def test_run_command_stops_when_an_explicit_server_does_not_answer(
    clean_env, tmp_path, variable
) -> None:
    port = free_port()
    url = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/routa",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }[variable]
    env = {**clean_env, variable: url}
    code, out, err = await _run(
        ["services.devserver", "--port", str(free_port()), "--origin", "aiohttp"],
        env,
        timeout=START_TIMEOUT,
    )
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"routa-dev: {variable}={url} does not answer ("), lines
    assert "embedded" not in out, out  # nothing was started in its place
    assert not (tmp_path / "data" / "postgres").exists()
    assert not (tmp_path / "data" / "redis").exists()


async def test_migrate_and_services_name_an_unreachable_database(clean_env) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/routa"
    env = {**clean_env, "DATABASE_URL": url}
    code, out, err = await _run(["shared.db.migrate"], env, timeout=60)
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err, err
    assert err.strip().startswith(
        "routa-migrate: DATABASE_URL: Postgres does not answer"
    )
    assert len(err.strip().splitlines()) == 1, err
    # the query service retries for a while (a stack may start in any order), then stops
    env["PORT"] = str(free_port())
    code, out, err = await _run(["services.query"], env, timeout=90)
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("routa-query: DATABASE_URL: Postgres does not answer"), err
