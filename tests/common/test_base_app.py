"""What every process has: health, readiness, request ids, JSON errors, metrics."""

from __future__ import annotations

from services.common.app import create_app


async def test_health_ready_request_id_and_json_404(aiohttp_client, settings) -> None:
    client = await aiohttp_client(create_app(settings, "test"))
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["service"] == "test"
    resp = await client.get("/readyz")
    assert resp.status == 200
    resp = await client.get("/nope", headers={"X-Request-Id": "abc-123"})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "abc-123"
    assert await resp.json() == {"error": "Not found"}
    resp = await client.get("/healthz")
    assert resp.headers["X-Request-Id"]  # generated when not given


async def test_readyz_names_the_dependency_that_is_down(
    aiohttp_client, make_settings
) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    client = await aiohttp_client(create_app(settings, "test"))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "redis" in (await resp.json())["error"]


async def test_metrics_count_requests_by_route_template(
    aiohttp_client, settings
) -> None:
    client = await aiohttp_client(create_app(settings, "test"))
    for _ in range(3):
        await client.get("/nope")
    text = await (await client.get("/metrics")).text()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("routa_http_request_duration_seconds_count")
        and 'status="404"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == 3.0
