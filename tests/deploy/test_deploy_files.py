"""deploy/: no container engine runs here, so the files are parsed and checked for what they must hold."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_runs_two_gateways_two_queries_behind_nginx() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    gateways = [
        s
        for s in services.values()
        if s.get("command", [None])[-1] == "services.gateway"
    ]
    queries = [
        s for s in services.values() if s.get("command", [None])[-1] == "services.query"
    ]
    assert len(gateways) == 2
    assert len(queries) == 2
    for svc in gateways + queries:
        env = svc["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["INSTANCE_ID"]
        assert "readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    ids = [svc["environment"]["INSTANCE_ID"] for svc in gateways + queries]
    assert len(set(ids)) == len(ids), "every instance needs its own INSTANCE_ID"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "3000:3000" in services["nginx"]["ports"]


@pytest.mark.parametrize("name", ["prod.conf", "compose.conf"])
def test_nginx_keeps_sse_streaming(name: str) -> None:
    text = (DEPLOY / "nginx" / name).read_text()
    for directive in (
        "proxy_buffering off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "gzip off",
    ):
        assert directive in text, directive
    timeout = re.search(r"proxy_read_timeout (\d+)(h|s|m)?;", text)
    assert timeout is not None
    value, unit = int(timeout.group(1)), timeout.group(2) or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    assert seconds > 300, "must outlast the heartbeat and the prompt wait"
    assert "location /api/acp" in text
    assert re.search(r"upstream gateway \{[^}]*server[^}]*server", text, re.S), (
        "two gateways"
    )
    assert re.search(r"upstream query \{[^}]*server[^}]*server", text, re.S), (
        "two query services"
    )
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "ip_hash" not in directives
    assert "sticky" not in directives


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_nginx_accepts_prod_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(DEPLOY / "nginx" / "prod.conf"),
            "-g",
            f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["gateway.yaml", "query.yaml"])
def test_k8s_manifests_have_probes_and_drain(name: str) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "preStop" in container["lifecycle"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop
    env = {e["name"]: e for e in container["env"]}
    for required in ("DATABASE_URL", "REDIS_URL", "INSTANCE_ID", "PORT", "HOST"):
        assert required in env
    assert deployment["spec"]["replicas"] >= 2
    port = container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["port"] == port
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "slim" in text
