"""The event-log-at-scale benchmark at 1M events, in the default suite (about 30-60 s on
2 cores; the 100M run is the same code with a bigger size, outside CI: docs/benchmarks.md).
Asserts what the load produced and that every figure was measured; never a time."""

from __future__ import annotations

import pytest

from tests.bench import suite
from tests.bench.eventlog_scale import eventlog_run, rows_of

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_eventlog_at_one_million_events(monkeypatch):
    monkeypatch.setattr(suite, "DURATION", 1.0)
    result = await eventlog_run(1_000_000, 10_000, long_events=100_000)
    check = result["check"]
    assert check["sessions_wrong"] == 0, check
    assert check["first_payload_ok"], check
    assert result["load"]["events_per_s"] > 0
    # every event is on disk, and costs more than its payload
    assert result["disk"]["bytes_per_event"] > result["disk"]["payload_avg"] > 100
    # the whole long session came through /history, and every replay depth was streamed
    assert result["history"]["whole_bytes"] > 100_000 * 100
    depths = result["replay"]
    assert set(depths) == {"100", "1000", "10000", "100000"}
    assert all(depths[d]["bytes"] > int(d) * 100 for d in depths), (
        depths
    )  # at least the events' bytes
    assert result["append_at_size_per_s"] > 0
    assert result["append_empty_per_s"] > 0
    # retention removed a tenth of the sessions' logs, one bounded statement at a time
    assert result["retention"]["sessions"] > 0
    assert result["retention"]["largest_delete"] <= 1000
    assert len(rows_of(result)) == 8
