"""AGENT_USER: a root gateway runs its agents as an unprivileged user (issue 12, defect 10).

As root (the test machine), the test creates a user, starts a real gateway with
AGENT_USER set and checks the agent process's ids in /proc and the owner of what the agent
and the gateway on its behalf wrote. Not as root, it checks that the setting is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.keys import HUB
from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from tests.security.confine_support import new_session, turn_text

PROBE = Path(__file__).parent / "agents" / "probe_agent.py"
ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def agent_user() -> Iterator[str]:
    """A fresh system user when root; else an existing unprivileged one."""
    if not IS_ROOT:
        yield "nobody"
        return
    name = f"routa-t{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def python_for(user: str) -> str:
    """A Python the user may run (the probe agent needs only the standard library)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not candidate:
            continue
        try:
            ran = subprocess.run(
                [candidate, "-c", "pass"], user=user, capture_output=True, check=False
            )
        except OSError:  # not executable for that user
            continue
        if ran.returncode == 0:
            return candidate
    raise AssertionError(f"no Python on this machine can run as {user}")


def proc_ids(pid: int) -> dict[str, list[int]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in lines)}
    return {k: [int(x) for x in fields[k]] for k in ("Uid", "Gid", "Groups")}


async def test_agents_run_as_agent_user(
    make_settings, aiohttp_client, pool, workspace_id, agent_user
):
    if not IS_ROOT:
        with pytest.raises(SystemExit, match="needs the gateway to run as root"):
            create_app(make_settings(agent_user=agent_user))
        return
    import pwd

    entry = pwd.getpwnam(agent_user)
    uid, gid = entry.pw_uid, entry.pw_gid
    # a data directory the agent user can reach (pytest's are private to root)
    data = Path(tempfile.mkdtemp(prefix="routa-agent-user-"))
    data.chmod(0o755)
    try:
        settings = make_settings(
            agent_user=agent_user, allow_custom_commands=True, data_dir=data
        )
        gw = await aiohttp_client(create_app(settings))
        async with asyncio.timeout(10):
            await gw.app[HUB].connected.wait()
        sid = await new_session(
            gw,
            pool,
            {
                "workspaceId": workspace_id,
                "provider": "custom",
                "customCommand": python_for(agent_user),
                "customArgs": [str(PROBE)],
            },
        )
        pid = gw.app[SESSION_MANAGER].live[sid].agent.pid
        ids = proc_ids(pid)
        assert ids["Uid"] == [uid] * 4  # real, effective, saved, filesystem
        assert ids["Gid"] == [gid] * 4
        assert 0 not in ids["Groups"]  # none of root's groups kept
        report = json.loads(await turn_text(gw, pool, sid, "env"))
        assert (report["uid"], report["euid"], report["gid"]) == (uid, uid, gid)
        home, cwd = Path(report["env"]["HOME"]), Path(report["cwd"])
        assert home.stat().st_uid == uid
        assert cwd.stat().st_uid == uid
        # what the gateway writes for the agent belongs to the agent, new dirs too
        assert (
            await turn_text(gw, pool, sid, "write sub/dir/out.txt hello") == "written"
        )
        for path in (cwd / "sub", cwd / "sub" / "dir", cwd / "sub" / "dir" / "out.txt"):
            assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
        assert (cwd / "sub" / "dir" / "out.txt").read_text() == "hello"
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("routa-no-such-user", "AGENT_USER: no such user 'routa-no-such-user'"),
        ("root", "AGENT_USER: 'root' is root"),
    ],
)
def test_unusable_agent_user_stops_the_gateway_in_one_line(value, words, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKENS"}
    env["AGENT_USER"] = value
    # nothing to reach, should the gateway not stop where it must
    env |= {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PORT": "0",
        "DATA_DIR": str(tmp_path),
    }
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    ran = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last == f"gateway: {words}" + (
        "; name an unprivileged user" if value == "root" else ""
    )


def test_root_without_agent_user_warns_once(make_settings, caplog):
    caplog.set_level(logging.WARNING, logger="services.gateway.confine")
    create_app(make_settings())
    warnings = [r for r in caplog.records if "AGENT_USER" in r.getMessage()]
    assert len(warnings) == (1 if IS_ROOT else 0)
