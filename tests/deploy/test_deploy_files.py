"""deploy/: no container engine runs here, so the files are parsed and checked for what they must hold.

The nginx configurations also go through the real `nginx -t`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# What a gateway needs beyond DRAIN_GRACE before SIGKILL: stopping its agents (stdin closed,
# 2 s, SIGTERM, 2 s, SIGKILL), SHUTDOWN_TIMEOUT, and room for the rest of the shutdown.
AGENT_STOP_SECONDS = 4
MARGIN_SECONDS = 10
# a real agent turn takes minutes: the drain must outlast at least the prompt wait
MIN_DRAIN_GRACE = Settings.model_fields["prompt_timeout"].default
SHUTDOWN_TIMEOUT = Settings.model_fields["shutdown_timeout"].default


def _seconds(value: str | int) -> float:
    """A compose duration (`630s`, `10m30s`, `1h`) or a bare number of seconds."""
    if isinstance(value, int):
        return value
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", value)
    assert parts, value
    assert "".join(n + u for n, u in parts) == value, value
    factor = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * factor[u] for n, u in parts)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or [None]
    return {"services.gateway": "gateway", "services.query": "query"}.get(command[-1])


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _k8s_docs() if d["kind"] == "Deployment"}


def _k8s_role(deployment: dict[str, Any]) -> str | None:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {"services.gateway": "gateway", "services.query": "query"}.get(
        container["args"][-1]
    )


def _image_pinned(image: str) -> bool:
    """A digest, or a tag naming a full release (`3.11.14-slim`, not `3.11-slim` or latest).

    Postgres numbers its releases major.minor (16.10); the others major.minor.patch.
    """
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    release = re.match(r"(\d+(?:\.\d+)*)(?:-|$)", tag)
    if not name or "/" in tag or release is None:
        return False
    parts = 2 if name.rsplit("/", 1)[-1] == "postgres" else 3
    return len(release.group(1).split(".")) >= parts


# --- Compose -------------------------------------------------------------------------------


def test_compose_runs_two_gateways_two_queries_behind_nginx() -> None:
    services = _compose()["services"]
    gateways = [s for s in services.values() if _role(s) == "gateway"]
    queries = [s for s in services.values() if _role(s) == "query"]
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


def _run(argv: list[str], cwd: Path = REPO) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    """The Compose specification's own JSON schema (vendored by check-jsonschema)."""
    _run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ]
    )


def test_compose_gateways_share_one_volume_at_data_dir() -> None:
    """Adoption after a crash or a drain finds the agent's home and the session's files."""
    compose = _compose()
    gateways = [s for s in compose["services"].values() if _role(s) == "gateway"]
    sources = set()
    for svc in gateways:
        data_dir = svc["environment"]["DATA_DIR"]
        mounts = dict(v.split(":")[1::-1] for v in svc["volumes"])  # target -> source
        assert data_dir in mounts, f"DATA_DIR {data_dir} is not on a volume"
        sources.add(mounts[data_dir])
    (volume,) = sources  # one and the same for every gateway
    assert volume in compose["volumes"], "a named volume, not a host path per service"


def test_compose_grace_outlasts_the_drain() -> None:
    for svc in _compose()["services"].values():
        if _role(svc) != "gateway":
            continue
        drain = float(svc["environment"]["DRAIN_GRACE"])
        assert drain >= MIN_DRAIN_GRACE, "sized for minutes-long turns"
        needed = drain + AGENT_STOP_SECONDS + SHUTDOWN_TIMEOUT + MARGIN_SECONDS
        assert _seconds(svc["stop_grace_period"]) >= needed


def test_compose_apps_are_locked_down_and_images_pinned() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        assert _image_pinned(svc["image"]), f"{name}: {svc['image']}"
        if _role(svc) is None:
            continue
        assert svc["image"] == f"routa-sessions:{VERSION}"
        assert svc["read_only"] is True, name
        assert "/tmp" in svc["tmpfs"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "entrypoint" not in svc, "the image's entrypoint (tini) stays"


# --- nginx ---------------------------------------------------------------------------------


def _directives(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


@pytest.mark.parametrize("name", ["prod.conf", "compose.conf", "local.conf"])
def test_nginx_keeps_sse_streaming(name: str) -> None:
    text = _directives((DEPLOY / "nginx" / name).read_text())
    for directive in (
        "proxy_buffering off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "gzip off",
    ):
        assert directive in text, directive
    timeout = re.search(r"proxy_read_timeout (\d+)(h|s|m)?;", text)
    assert timeout is not None
    assert _seconds(timeout.group(1) + (timeout.group(2) or "s")) > 10 * 60, (
        "must outlast the heartbeat, the prompt wait and a minutes-long turn"
    )
    connect = re.search(r"proxy_connect_timeout (\d+)(s)?;", text)
    assert connect is not None, "a dead upstream must be given up on quickly"
    assert int(connect.group(1)) <= 10
    assert "location /api/acp" in text
    assert re.search(r"upstream gateway \{[^}]*server[^}]*server", text, re.S), (
        "two gateways"
    )
    assert re.search(r"upstream query \{[^}]*server[^}]*server", text, re.S), (
        "two query services"
    )
    assert "ip_hash" not in text
    assert "sticky" not in text


def test_nginx_in_compose_resolves_the_service_names_again() -> None:
    """Docker's DNS, and `resolve` on every server so re-created containers are followed."""
    text = _directives((DEPLOY / "nginx" / "compose.conf").read_text())
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", text, re.M)
    for block in re.findall(r"upstream \w+ \{([^}]*)\}", text):
        assert re.search(r"^\s*zone \w+", block, re.M), "resolve needs a shared zone"
        servers = re.findall(r"^\s*server (.*);", block, re.M)
        assert servers
        assert all(s.split()[-1] == "resolve" for s in servers), servers
    # `resolve` in an upstream block came to open-source nginx in 1.27.3
    tag = _compose()["services"]["nginx"]["image"].split(":")[1]
    assert tuple(int(p) for p in tag.split(".")[:3]) >= (1, 27, 3)


def _nginx_t(conf: Path, prefix: Path, extra_globals: str = "") -> None:
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-g",
            f"{extra_globals}error_log {prefix}/error.log;",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        cwd=prefix,
    )
    assert result.returncode == 0, result.stderr


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx not installed (.ci/run installs it)"
)


@needs_nginx
def test_nginx_accepts_prod_config(tmp_path: Path) -> None:
    _nginx_t(DEPLOY / "nginx" / "prod.conf", tmp_path, f"pid {tmp_path}/nginx.pid; ")


@needs_nginx
def test_nginx_accepts_local_config(tmp_path: Path) -> None:
    (tmp_path / ".routa" / "nginx").mkdir(parents=True)
    _nginx_t(DEPLOY / "nginx" / "local.conf", tmp_path)


@needs_nginx
def test_nginx_accepts_compose_config(tmp_path: Path) -> None:
    """The compose names do not resolve here, and `resolve` is newer than Debian's nginx.

    So the check runs on a copy with the service names pointed at 127.0.0.1 and `resolve`
    dropped when the local nginx predates it; everything else is the file as shipped.
    """
    text = (DEPLOY / "nginx" / "compose.conf").read_text()
    local, count = re.subn(r"\b(gateway|query)\d+:", "127.0.0.1:", text)
    assert count == 4
    version = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, check=False, timeout=30
    ).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    assert found is not None, version
    if tuple(int(g) for g in found.groups()) < (1, 27, 3):
        local, count = re.subn(r" resolve;", ";", local)
        assert count == 4
    conf = tmp_path / "compose.conf"
    conf.write_text(local)
    _nginx_t(conf, tmp_path, f"pid {tmp_path}/nginx.pid; ")


# --- Kubernetes ----------------------------------------------------------------------------


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


def test_k8s_manifests_validate_against_the_api_schemas() -> None:
    """Strict: a misspelt or misplaced field fails here, not at `kubectl apply`."""
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, latest_version(), strict=True)


def test_k8s_every_container_meets_pod_security_restricted() -> None:
    """The "restricted" profile's fields, plus a read-only root with writable volumes."""
    deployments = _deployments()
    assert {_k8s_role(d) for d in deployments.values()} == {"gateway", "query"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        volumes = {v["name"] for v in spec.get("volumes", [])}
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile") or pod.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: /tmp must stay writable"
            for mount in mounts.values():
                assert mount["name"] in volumes, where
                assert not mount.get("readOnly"), where
            assert _image_pinned(container["image"]), where
            assert container["image"] == f"routa-sessions:{VERSION}", where
            # `command` would replace the image's ENTRYPOINT (tini); `args` replace CMD
            assert "command" not in container, where


def test_k8s_gateways_mount_a_read_write_many_claim_at_data_dir() -> None:
    docs = _k8s_docs()
    claims = {
        d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"
    }
    gateways = [d for d in _deployments().values() if _k8s_role(d) == "gateway"]
    assert gateways
    for deployment in gateways:
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        data_dir = env["DATA_DIR"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert (
            spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
        )


def test_k8s_gateway_grace_outlasts_the_drain() -> None:
    for deployment in _deployments().values():
        if _k8s_role(deployment) != "gateway":
            continue
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        drain = float(env["DRAIN_GRACE"])
        assert drain >= MIN_DRAIN_GRACE, "sized for minutes-long turns"
        shutdown = float(env.get("SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT))
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        needed = pre_stop + drain + AGENT_STOP_SECONDS + shutdown + MARGIN_SECONDS
        assert spec["terminationGracePeriodSeconds"] >= needed
        # a successor starts before the draining pod is counted out
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_k8s_disruption_budgets_select_each_deployments_pods() -> None:
    budgets = [d for d in _k8s_docs() if d["kind"] == "PodDisruptionBudget"]
    for name, deployment in _deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            b
            for b in budgets
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{name}: one PodDisruptionBudget selects its pods"
        (budget,) = matching
        assert budget["apiVersion"] == "policy/v1"
        replicas = deployment["spec"]["replicas"]
        if "maxUnavailable" in budget["spec"]:
            assert 1 <= budget["spec"]["maxUnavailable"] < replicas
        else:
            assert 1 <= budget["spec"]["minAvailable"] < replicas, "evictions possible"
    # and no budget selects the other component's pods as well
    gateway_labels = next(
        d["spec"]["template"]["metadata"]["labels"]
        for d in _deployments().values()
        if _k8s_role(d) == "gateway"
    )
    query_labels = next(
        d["spec"]["template"]["metadata"]["labels"]
        for d in _deployments().values()
        if _k8s_role(d) == "query"
    )
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert not (
            selector <= gateway_labels.items() and selector <= query_labels.items()
        )


# --- Dockerfile ----------------------------------------------------------------------------


def _dockerfile_stages() -> list[dict[str, Any]]:
    """Instructions per stage, continuation lines joined, `${ARG}` in FROM resolved."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif op == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            alias = rest.split()[2] if " AS " in rest.upper() else str(len(stages))
            stages.append({"image": image, "name": alias, "ops": []})
        else:
            stages[-1]["ops"].append((op, rest))
    return stages


def _ops(stage: dict[str, Any], op: str) -> list[str]:
    return [rest for o, rest in stage["ops"] if o == op]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint parses the file as Docker does and lints it; exceptions are inline, with why."""
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    _run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")])


def test_dockerfile_runs_as_non_root() -> None:
    final = _dockerfile_stages()[-1]
    (user,) = _ops(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert "slim" in final["image"]


def test_dockerfile_bases_are_pinned() -> None:
    for stage in _dockerfile_stages():
        assert _image_pinned(stage["image"]), stage["image"]


def test_dockerfile_carries_node_and_the_pinned_agents() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 3, "multi-stage: python build, agents, runtime"
    final = stages[-1]
    (npm_stage,) = [s for s in stages if any("npm ci" in r for r in _ops(s, "RUN"))]
    assert npm_stage is not final
    copies = " ".join(_ops(npm_stage, "COPY"))
    assert "agents/package.json" in copies
    assert "agents/package-lock.json" in copies
    (workdir,) = _ops(npm_stage, "WORKDIR")
    copied = [
        c for c in _ops(final, "COPY") if c.startswith(f"--from={npm_stage['name']} ")
    ]
    assert copied, "the runtime stage copies the installed agents"
    source, target = copied[0].split()[1:]
    assert source.rstrip("/") in (workdir, f"{workdir}/node_modules")
    node_bin = f"{target.rstrip('/')}/node_modules/.bin"
    env = " ".join(_ops(final, "ENV"))
    assert re.search(rf"PATH={re.escape(node_bin)}:", env), "presets find them on PATH"
    installs = " ".join(r for r in _ops(final, "RUN") if "apt-get install" in r)
    assert re.search(r"\bnodejs\b", installs), "Node runs claude-agent-acp"
    assert not re.search(r"\bnpm\b", installs), "no package manager at run time"
    # the same base everywhere: the Node that ran `npm ci` is the one that runs the agents
    assert npm_stage["image"] == final["image"]


def test_dockerfile_entrypoint_is_an_init_that_reaps() -> None:
    final = _dockerfile_stages()[-1]
    (entrypoint,) = _ops(final, "ENTRYPOINT")
    argv = yaml.safe_load(entrypoint)  # the exec form is a JSON list
    assert isinstance(argv, list), "exec form, so the init is PID 1"
    assert Path(argv[0]).name in {"tini", "dumb-init"}
    assert "-g" not in argv, "SIGTERM goes to the gateway alone; its drain stops agents"
    installs = " ".join(r for r in _ops(final, "RUN") if "apt-get install" in r)
    assert re.search(rf"\b{Path(argv[0]).name}\b", installs), "from Debian's package"
    (cmd,) = _ops(final, "CMD")
    assert yaml.safe_load(cmd)[-1] == "services.gateway"


def test_dockerfile_installs_the_lock_and_no_embedded_servers() -> None:
    stages = _dockerfile_stages()
    runs = [r for s in stages for r in _ops(s, "RUN")]
    pip_runs = [r for r in runs if "pip install" in r]
    assert any(
        "-r requirements.txt" in r and "--require-hashes" in r for r in pip_runs
    ), "the production lock, hash-checked"
    for run in pip_runs:
        assert "--no-deps" in run, "nothing resolved beyond the lock"
        assert "[" not in run, "no extras (embedded, test) in the image"
        assert "requirements-test" not in run
    text = (DEPLOY / "Dockerfile").read_text()
    assert "embedded" not in re.sub(r"#.*", "", text)
