"""`/metrics` of both processes: every listed series moves after real traffic."""

from __future__ import annotations

import asyncio
import sys

from prometheus_client.parser import text_string_to_metric_families

from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from tests.gateway.rpcutil import call, ok, wait_ready

WAIT = 20.0  # hang guard only


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def wait_value(client, name: str, expected: float, **labels: str) -> None:
    async with asyncio.timeout(WAIT):
        while value(await scrape(client), name, **labels) != expected:
            await asyncio.sleep(0.02)


async def test_query_metrics_move(settings, aiohttp_client, workspace_id):
    client = await aiohttp_client(create_query(settings))
    before = await scrape(client)
    assert value(before, "routa_cache_requests_total") == 0

    for _ in range(3):
        resp = await client.get("/api/sessions", params={"workspaceId": workspace_id})
        assert resp.status == 200
    resp = await client.get("/api/sessions/not-a-session")
    assert resp.status == 404

    # every SSE kind of the query service counts while open and drops when closed
    streams = {
        "sessions": "/api/sessions/events",
        "notes": "/api/notes/events",
        "tasks": "/api/tasks/events",
    }
    opened = []
    for kind, path in streams.items():
        r = await client.get(path, params={"workspaceId": workspace_id})
        assert r.status == 200
        await r.content.readline()  # the connected frame: the handler is running
        opened.append(r)
        await wait_value(client, "routa_sse_streams_open", 1, stream=kind)

    after = await scrape(client)
    # request latency by route template, never by raw path
    assert (
        value(
            after,
            "routa_http_request_duration_seconds_count",
            route="/api/sessions",
            method="GET",
            status="200",
        )
        == 3
    )
    assert (
        value(
            after,
            "routa_http_request_duration_seconds_count",
            route="/api/sessions/{session_id}",
            status="404",
        )
        == 1
    )
    assert not any("not-a-session" in str(labels) for (_, labels) in after)
    # cache: the first list is a miss, the repeats are hits
    assert value(after, "routa_cache_requests_total", result="miss") >= 1
    hits = value(after, "routa_cache_requests_total", result="hit_local") + value(
        after, "routa_cache_requests_total", result="hit_redis"
    )
    assert hits >= 1
    # counters add across instances; a ratio gauge does not (issue 15 item 5)
    assert not any(name == "routa_cache_hit_ratio" for (name, _) in after)

    for r in opened:
        r.close()
    for kind in streams:
        await wait_value(client, "routa_sse_streams_open", 0, stream=kind)


async def test_gateway_metrics_move(
    make_settings, aiohttp_client, pool, workspace_id, cwd_root
):
    client = await aiohttp_client(
        create_gateway(make_settings(allow_custom_commands=True))
    )
    before = await scrape(client)
    assert value(before, "routa_agent_processes_live") == 0
    assert value(before, "routa_event_log_write_seconds_count") == 0

    sid = (await ok(client, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    stream = await client.get("/api/acp", params={"sessionId": sid})
    assert stream.status == 200
    await wait_value(client, "routa_sse_streams_open", 1, stream="acp")
    assert (await ok(client, "session/prompt", {"sessionId": sid, "prompt": "hi"}))[
        "stopReason"
    ] == "end_turn"
    missing = await call(
        client,
        "session/prompt",
        {"sessionId": "00000000-0000-4000-8000-000000000000", "prompt": "x"},
    )
    assert missing["error"]["code"] == -32004
    assert (await call(client, "no/such", {}))["error"]["code"] == -32601

    after = await scrape(client)
    assert (
        value(after, "routa_jsonrpc_calls_total", method="session/new", code="0") == 1
    )
    assert (
        value(after, "routa_jsonrpc_calls_total", method="session/prompt", code="0")
        == 1
    )
    assert (
        value(
            after, "routa_jsonrpc_calls_total", method="session/prompt", code="-32004"
        )
        == 1
    )
    assert value(after, "routa_jsonrpc_calls_total", code="-32601") == 1
    # latency per method, whatever the outcome; an unknown name is not a label
    assert (
        value(after, "routa_jsonrpc_duration_seconds_count", method="session/prompt")
        == 2
    )
    assert (
        value(after, "routa_jsonrpc_duration_seconds_count", method="session/new") == 1
    )
    assert value(after, "routa_jsonrpc_duration_seconds_count", method="<unknown>") == 1
    assert not any("no/such" in str(labels) for (_, labels) in after)
    assert not any(sid in str(labels) for (_, labels) in after)
    assert value(after, "routa_agent_processes_live") == 1
    assert value(after, "routa_event_log_write_seconds_count") >= 1
    assert value(after, "routa_events_written_total") >= 4
    assert (
        value(
            after,
            "routa_http_request_duration_seconds_count",
            route="/api/acp",
            method="POST",
        )
        == 4
    )
    stream.close()
    await wait_value(client, "routa_sse_streams_open", 0, stream="acp")

    # an agent that dies mid-turn, one that never starts
    assert value(after, "routa_agent_crashes_total") == 0
    assert value(after, "routa_agent_start_failures_total") == 0
    crash = await call(client, "session/prompt", {"sessionId": sid, "prompt": "/crash"})
    assert crash["error"]["code"] == -32000
    await wait_value(client, "routa_agent_crashes_total", 1)
    broken = await ok(
        client,
        "session/new",
        {
            "workspaceId": workspace_id,
            "provider": "custom",
            # exits before it answers initialize
            "customCommand": sys.executable,
            "customArgs": ["-c", "raise SystemExit(3)"],
        },
    )
    await wait_ready(pool, broken["sessionId"])
    await wait_value(client, "routa_agent_start_failures_total", 1)
    assert value(await scrape(client), "routa_agent_crashes_total") == 1


async def test_runtime_collectors_and_no_created_series(settings, aiohttp_client):
    for factory in (create_gateway, create_query):
        client = await aiohttp_client(factory(settings))
        resp = await client.get("/metrics")
        text = await resp.text()
        samples = await scrape(client)
        names = {name for (name, _) in samples}
        assert {
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        } <= names
        assert "python_info" in names
        assert any(n.startswith("python_gc_") for n in names)
        assert "_created" not in text
