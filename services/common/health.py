"""/healthz, /readyz and /metrics: liveness without dependencies, readiness with them,
and the Prometheus exposition."""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.common.apidoc import api
from services.common.http import json_response
from services.common.keys import HEALTH, METRICS


@api("Liveness: the process is up (no dependency calls)", "ops", {"type": "object"})
async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    return json_response(
        {"ok": True, "service": health.service, "instanceId": health.instance_id}
    )


@api(
    "Readiness: Postgres and Redis answer; 503 while draining",
    "ops",
    {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}},
    (503,),
)
async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    if health.draining:
        return json_response({"error": "draining"}, status=503)
    failures: dict[str, str] = {}
    for name, check in health.checks.items():
        try:
            async with asyncio.timeout(1.0):
                await check()
        except Exception as err:  # noqa: BLE001 - any failure means not ready
            failures[name] = err.__class__.__name__
    if failures:
        names = ", ".join(f"{k} ({v})" for k, v in failures.items())
        return json_response({"error": f"dependency unavailable: {names}"}, status=503)
    return json_response({"ok": True})


async def mark_draining(app: web.Application) -> None:
    """on_shutdown, first: /readyz answers 503 so balancers stop sending new work."""
    app[HEALTH].draining = True


@api("Prometheus metrics of this process", "ops", "text/plain")
async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """`GET /metrics`: prometheus-client's own aiohttp handler on this app's registry."""
    return await request.app[METRICS].exposition(request)
