"""Prometheus metrics of one process, in a registry of its own app (no global state).

Each app instance owns a `CollectorRegistry`, so several apps in one test process never clash.
Series are labelled by route template, never by raw path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

from services.common.http import Handler

_UNMATCHED = "<unmatched>"
_SKIP = frozenset({"/metrics", "/healthz", "/readyz"})


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_latency = Histogram(
            "routa_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=r,
            buckets=(
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
            ),
        )
        self.jsonrpc_calls = Counter(
            "routa_jsonrpc_calls_total",
            "JSON-RPC calls by method and error code (0 = success)",
            ["method", "code"],
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
        self.cache_requests = Counter(
            "routa_cache_requests_total",
            "Session list cache lookups by result (hit_local, hit_redis, miss, bypass)",
            ["result"],
            registry=r,
        )


METRICS = web.AppKey("metrics", Metrics)


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    if request.path in _SKIP:
        return await handler(request)
    metrics = request.app[METRICS]
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.request_latency.labels(
            request.method, _route_of(request), str(status)
        ).observe(time.perf_counter() - start)


def setup_metrics(app: web.Application) -> Metrics:
    metrics = Metrics()
    app[METRICS] = metrics
    app.middlewares.insert(0, metrics_middleware)
    app.router.add_get(
        "/metrics", make_aiohttp_handler(metrics.registry, disable_compression=True)
    )
    return metrics
