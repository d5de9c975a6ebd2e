"""Real third-party ACP agents (claude-agent-acp, opencode) with the network cut off.

Install them once (about 0.7 GB of node packages):
    npm install -g @zed-industries/claude-agent-acp@0.23.1 opencode-ai@1.18.33
or into a prefix of your own (`--prefix DIR`, then put DIR/bin on PATH or set
REALAGENTS_BIN=DIR/bin). Run with `pytest -m realagents`. Each agent runs under
`unshare -n` (a network namespace with only loopback up, which opencode's internal server
needs), a private HOME and no credentials, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

WRAPPER = """#!/bin/sh
# no network: a fresh network namespace with only loopback up
exec unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"' {binary} "$@"
"""


def find_agent(name: str) -> str | None:
    extra = os.environ.get("REALAGENTS_BIN")
    path = os.pathsep.join(p for p in (extra, os.environ.get("PATH")) if p)
    return shutil.which(name, path=path)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def unshare_ok() -> None:
    if not _can_unshare():
        pytest.skip("realagents need `unshare -n` and `ip` (root or user namespaces)")


@pytest.fixture
def offline_agent(tmp_path: Path, unshare_ok: None):
    """`offline_agent("claude-agent-acp")` → path of a wrapper that runs it without network."""

    def _make(name: str) -> str:
        binary = find_agent(name)
        if binary is None:
            pytest.skip(
                f"{name} not installed: npm install -g "
                "@zed-industries/claude-agent-acp@0.23.1 opencode-ai@1.18.33"
            )
        wrapper = tmp_path / f"{name}-offline"
        wrapper.write_text(WRAPPER.format(binary=binary))
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        return str(wrapper)

    return _make
