"""The lock-free per-request series expose exactly what prometheus_client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.common.fastmetrics import FastCounter, FastHistogram
from services.common.metrics import LATENCY_BUCKETS

# on a bound, between bounds, below the first and past the last
LATENCIES = [0.0001, 0.0005, 0.0007, 0.003, 0.25, 0.26, 400.0]


def exposition(*collectors: object) -> str:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    lines = generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


def test_the_histogram_matches_prometheus_clients() -> None:
    name, doc, labels = "x_seconds", "latency", ["method", "route"]
    fast = FastHistogram(name, doc, labels, LATENCY_BUCKETS)
    reference = Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=None)
    for i, value in enumerate(LATENCIES):
        route = "/a" if i % 3 else "/b"
        fast.observe(("GET", route), value)
        reference.labels("GET", route).observe(value)
    assert exposition(fast) == exposition(reference)
    assert 'x_seconds_bucket{le="+Inf",method="GET",route="/a"} 4.0' in exposition(fast)


def test_the_counter_matches_prometheus_clients() -> None:
    name, doc = "lookups_total", "lookups by result"
    fast = FastCounter(name, doc, "result")
    reference = Counter(name, doc, ["result"], registry=None)
    for result in ["hit", "hit", "miss", "hit"]:
        fast.inc(result)
        reference.labels(result).inc()
    assert exposition(fast) == exposition(reference)
    assert 'lookups_total{result="hit"} 3.0' in exposition(fast)
