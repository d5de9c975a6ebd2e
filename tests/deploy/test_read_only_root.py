"""The processes run on a read-only root filesystem, writing only to DATA_DIR and /tmp.

That is what the Kubernetes manifests (readOnlyRootFilesystem) and Compose (read_only) give
them. No container engine runs here, so a private mount namespace stands in: / re-mounted
read-only, a tmpfs on /tmp holding DATA_DIR. A gateway and a query service start there, an
echo session runs a turn, the read side returns it, and SIGTERM stops both cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.scaleout.support import free_port

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # hang guard only

# Inside `unshare --mount`: what this namespace mounts is seen by no other process.
SCRIPT = r"""
set -eu
mount -t tmpfs -o size=256m routa-tmp /tmp
mount -o remount,bind,ro /
if touch "$REPO/.read-only-probe" 2>/dev/null; then
    echo "the root filesystem is still writable" >&2; exit 3
fi
mkdir -p "$DATA_DIR"
PORT=$GATEWAY_PORT INSTANCE_ID=ro-gateway python -m services.gateway &
gateway=$!
PORT=$QUERY_PORT INSTANCE_ID=ro-query python -m services.query &
query=$!
trap 'kill -TERM $gateway $query 2>/dev/null' TERM
set +e
wait $gateway $query  # returns early on SIGTERM, once the trap passed it on
wait $gateway; gateway_rc=$?
wait $query; query_rc=$?
echo "exit codes: gateway $gateway_rc query $query_rc"
exit $((gateway_rc + query_rc))
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private mount namespace (CI has both)",
)


def _call(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{log.read_text()}")


def test_gateway_and_query_run_on_a_read_only_root(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    gateway_port, query_port = free_port(), free_port()
    env = {
        **os.environ,
        "REPO": str(REPO),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"test-ro-{uuid.uuid4().hex[:8]}",
        "DATA_DIR": "/tmp/data",
        "HOST": "127.0.0.1",
        "GATEWAY_PORT": str(gateway_port),
        "QUERY_PORT": str(query_port),
        "LOG_FORMAT": "json",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    log = tmp_path / "processes.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", SCRIPT],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        gateway = f"http://127.0.0.1:{gateway_port}"
        query = f"http://127.0.0.1:{query_port}"
        _wait_ready(gateway, proc, log)
        _wait_ready(query, proc, log)
        created = _call(
            f"{gateway}/api/acp",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "session/new",
                "params": {"workspaceId": "default", "name": "read-only root"},
            },
        )
        session_id = created["result"]["sessionId"]
        prompted = _call(
            f"{gateway}/api/acp",
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "session/prompt",
                "params": {"sessionId": session_id, "prompt": "hello world"},
            },
        )
        assert prompted.get("result") == {"stopReason": "end_turn"}, prompted
        history = _call(f"{query}/api/sessions/{session_id}/history")
        text = json.dumps(history)
        assert "turn_complete" in text
        assert "hello" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "exit codes: gateway 0 query 0" in output
    assert "Read-only file system" not in output
    assert not (REPO / ".read-only-probe").exists()
