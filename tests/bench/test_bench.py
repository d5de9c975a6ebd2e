"""`pytest -m bench`: the whole suite, short, asserting only that every scenario produced
its rows (figures are never asserted: timing belongs to the table, not to a test)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.bench import suite

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
async def test_suite_prints_every_scenario(monkeypatch):
    monkeypatch.setattr(suite, "DURATION", float(os.environ.get("BENCH_DURATION", "2")))
    monkeypatch.setattr(suite, "SOAK", float(os.environ.get("BENCH_SOAK", "10")))
    ctx = await suite.run()
    text = suite.table(ctx)
    for scenario in (
        "1 warm list",
        "2 hop",
        "3 fan-out",
        "4 session/new",
        "5 soak",
        "6 log@",
    ):
        assert scenario in text, text
