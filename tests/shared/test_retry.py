"""The one retry policy: doubling delays up to a cap, with jitter, reset on success."""

from __future__ import annotations

from shared.retry import Backoff


def test_delays_double_to_the_cap_with_jitter() -> None:
    backoff = Backoff(0.1, 2.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    for ceiling in ceilings:
        delay = backoff.delay()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.at_cap


def test_delays_are_spread_not_identical() -> None:
    delays = {Backoff(1.0, 1.0).delay() for _ in range(50)}
    assert len(delays) > 40  # processes retrying together do not come back together


def test_reset_starts_from_the_base_again() -> None:
    backoff = Backoff(0.1, 2.0)
    for _ in range(6):
        backoff.delay()
    backoff.reset()
    assert not backoff.at_cap
    assert backoff.delay() <= 0.1
