"""Fixtures of the devtools tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def data_tmp() -> Iterator[Path]:
    """A scratch dir outside pytest's basetemp.

    As root, Postgres runs as another user, which must traverse to its data directory;
    every pytest start resets /tmp/pytest-of-<user> to mode 0700, which would cut it off
    in the middle of a run when another pytest starts.
    """
    path = Path(tempfile.mkdtemp(prefix="routa-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
