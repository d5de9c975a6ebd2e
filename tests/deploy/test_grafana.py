"""deploy/grafana's dashboard reads only series the processes expose (issue 15 item 5).

Both apps are scraped after traffic; every PromQL expression of the dashboard (panels and
template variables) is taken apart: each series it names must be among the scraped ones,
and each label it matches or groups by must be a label of those series (or one Prometheus
adds: instance, job) — a renamed metric or label fails here, not on an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from tests.gateway.rpcutil import ok, wait_ready

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
ADDED_BY_PROMETHEUS = {"instance", "job"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


def _expressions(node: Any) -> list[str]:
    """Every `expr` of a target and every query of a template variable."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_expressions(item))
    return found


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(series names, label names) that one PromQL expression refers to."""
    text = re.sub(r"\$\{?\w+\}?", "x", expr)  # Grafana variables
    labels: set[str] = set()
    m = re.fullmatch(rf"\s*label_values\(\s*({IDENT})\s*,\s*({IDENT})\s*\)\s*", text)
    if m:
        return {m.group(1)}, {m.group(2)}
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(rf"({IDENT})\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    for grouping in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text
    ):
        labels |= {g.strip() for g in grouping.split(",") if g.strip()}
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names = set()
    for m in re.finditer(rf"(?<![\w.])({IDENT})(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word in KEYWORDS:
            continue  # a function or an operator
        names.add(word)
    labels.discard("le")  # the bucket label of every histogram
    return names, labels


def test_parse_takes_expressions_apart():
    names, labels = parse(
        'histogram_quantile(0.95, sum by (le, method) (rate(routa_x_bucket{code!="0",'
        'instance=~"$instance"}[$__rate_interval]))) / on (instance) up'
    )
    assert names == {"routa_x_bucket", "up"}
    assert labels == {"method", "code", "instance"}


async def _scrape(client) -> dict[str, set[str]]:
    """Series name → the label names it carries."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


async def test_every_dashboard_query_names_exposed_series(
    settings, aiohttp_client, pool, workspace_id, cwd_root
):
    gateway = await aiohttp_client(create_gateway(settings))
    query = await aiohttp_client(create_query(settings))
    # traffic, so that the labelled series exist
    sid = (await ok(gateway, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    stream = await gateway.get("/api/acp", params={"sessionId": sid})
    assert stream.status == 200
    await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "hi"})
    for _ in range(2):
        resp = await query.get("/api/sessions", params={"workspaceId": workspace_id})
        assert resp.status == 200
    events = await query.get(
        "/api/sessions/events", params={"workspaceId": workspace_id}
    )
    await events.content.readline()
    exposed = await _scrape(gateway)
    for name, labels in (await _scrape(query)).items():
        exposed.setdefault(name, set()).update(labels)
    stream.close()
    events.close()

    files = sorted(DASHBOARD.glob("*.json"))
    assert files, "no dashboard in deploy/grafana"
    used: set[str] = set()
    for path in files:
        dashboard = json.loads(path.read_text())
        expressions = _expressions(dashboard)
        assert len(expressions) >= 10, path
        for expr in expressions:
            names, labels = parse(expr)
            assert names, f"{path.name}: no series in {expr!r}"
            unknown = names - set(exposed)
            assert not unknown, f"{path.name}: {sorted(unknown)} not exposed ({expr})"
            known_labels = set().union(*(exposed[n] for n in names))
            stray = labels - known_labels - ADDED_BY_PROMETHEUS
            assert not stray, f"{path.name}: labels {sorted(stray)} not on {names}"
            used |= names
    # the operator's series are on it
    assert {
        "routa_jsonrpc_duration_seconds_bucket",
        "routa_agent_crashes_total",
        "routa_agent_start_failures_total",
        "routa_sse_subscribers_dropped_total",
        "routa_sse_subscribers_evicted_total",
        "routa_cache_requests_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    } <= used
