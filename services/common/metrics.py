"""Prometheus metrics of one process, in a registry of its own app (no global state).

Each app instance owns a `CollectorRegistry`, so several apps in one test process never clash.
Series are labelled by route template or JSON-RPC method name, never by raw path or session
id. No `_created` series (they double the series count and no dashboard reads them); the
process and Python runtime collectors are in each registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.aiohttp import make_aiohttp_handler

from services.common.fastmetrics import FastCounter, FastHistogram

disable_created_metrics()  # type: ignore[no-untyped-call]

_UNMATCHED = "<unmatched>"
_SKIP = frozenset({"/metrics", "/healthz", "/readyz"})
# why the gateway's fan-out closes a stream whose client does not keep up
_SLOW_REASONS = frozenset({"overflow", "backlog", "lagging"})


LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    300,
)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    # process_* (CPU, memory, file descriptors) and python_* (GC, version): the
    # stateless default collectors, read at scrape time, safe in several registries
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        # the /metrics handler of this registry (metrics_handler serves it)
        self.exposition = make_aiohttp_handler(r, disable_compression=True)
        # on every request: counted without prometheus_client's locks (fastmetrics.py)
        self.request_latency = FastHistogram(
            "routa_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            LATENCY_BUCKETS,
        )
        r.register(self.request_latency)
        self.jsonrpc_calls = Counter(
            "routa_jsonrpc_calls_total",
            "JSON-RPC calls by method and error code (0 = success)",
            ["method", "code"],
            registry=r,
        )
        self.jsonrpc_latency = Histogram(
            "routa_jsonrpc_duration_seconds",
            "JSON-RPC call latency by method (a prompt: until its turn ends)",
            ["method"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.agent_crashes = Counter(
            "routa_agent_crashes_total",
            "Agents that exited or broke their connection while running",
            registry=r,
        )
        self.agent_start_failures = Counter(
            "routa_agent_start_failures_total",
            "Agents that could not be started (spawn, initialize, session/new or load)",
            registry=r,
        )
        self.subscribers_dropped = Counter(
            "routa_sse_subscribers_dropped_total",
            "Event streams closed because their client did not keep up",
            registry=r,
        )
        self.subscribers_evicted = Counter(
            "routa_sse_subscribers_evicted_total",
            "Event streams closed to keep the process's stream buffers in budget",
            registry=r,
        )
        self.sse_streams = Gauge(
            "routa_sse_streams_open", "Open SSE streams", ["stream"], registry=r
        )
        self.live_agents = Gauge(
            "routa_agent_processes_live", "Live agent processes", registry=r
        )
        self.event_write_latency = Histogram(
            "routa_event_log_write_seconds",
            "Time to append one batch of events to Postgres",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.events_written = Counter(
            "routa_events_written_total", "Events appended to the log", registry=r
        )
        # agents' usage by provider only: a session id label would grow without bound
        self.agent_tokens = Counter(
            "routa_agent_tokens_total",
            "Tokens of finished turns as agents report them, by provider and kind "
            "(input, output, thought, cached_read, cached_write)",
            ["provider", "kind"],
            registry=r,
        )
        self.agent_cost = Counter(
            "routa_agent_cost_total",
            "Cost agents report (the growth of each session's cumulative cost), "
            "by provider and currency",
            ["provider", "currency"],
            registry=r,
        )
        self.cache_requests = FastCounter(
            "routa_cache_requests_total",
            "Session list cache lookups by result (hit_local, hit_redis, miss, bypass)",
            "result",
        )
        r.register(self.cache_requests)
        # labelled children by label values: `labels()` takes a lock and builds keys on
        # every call
        self._rpc_children: dict[str, Any] = {}
        self._call_children: dict[tuple[str, int], Any] = {}

    def observe_request(
        self, method: str, route: str, status: str, seconds: float
    ) -> None:
        self.request_latency.observe((method, route, status), seconds)

    def cache_lookup(self, result: str) -> None:
        """One session-list cache lookup: `hit_local`, `hit_redis`, `miss` or `bypass`."""
        self.cache_requests.inc(result)

    def observe_rpc(self, method: str, code: int, seconds: float) -> None:
        """One JSON-RPC call: its latency by method, its count by method and code."""
        latency = self._rpc_children.get(method)
        if latency is None:
            latency = self._rpc_children[method] = self.jsonrpc_latency.labels(method)
        latency.observe(seconds)
        key = (method, code)
        calls = self._call_children.get(key)
        if calls is None:
            calls = self._call_children[key] = self.jsonrpc_calls.labels(
                method, str(code)
            )
        calls.inc()

    def subscriber_closed(self, reason: str | None) -> None:
        """An event stream ended; count it when the fan-out closed it for being slow
        (`overflow`, `backlog`, `lagging`) or for the process budget (`memory`)."""
        if reason == "memory":
            self.subscribers_evicted.inc()
        elif reason in _SLOW_REASONS:
            self.subscribers_dropped.inc()

    def track_stream(self, kind: str) -> Callable[[], None]:
        """Count one open SSE stream of `kind`; call the result once when it ends."""
        gauge = self.sse_streams.labels(kind)
        gauge.inc()
        done = False

        def _end() -> None:
            nonlocal done
            if not done:
                done = True
                gauge.dec()

        return _end


SKIP_PATHS = _SKIP


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED
