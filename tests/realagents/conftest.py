"""Real third-party ACP agents (claude-agent-acp, opencode) doing real work, offline.

Install the pinned agents once: `scripts/install-agents` (agents/package-lock.json into
agents/node_modules, about 440 MB). Run: `pytest -m realagents` (scripts/test does). A
missing agent, or a machine where `unshare -n` does not work, FAILS the run with the
reason: this suite never skips.

Each agent runs under `unshare -n` (a network namespace with only loopback up) through
netns_relay.py, whose relay is its only way out: to the scripted model endpoint of the
test (modelserver.py) on a Unix socket. Gateways and the query service run as real
processes in the test's network namespace (they need Postgres and Redis).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared.providers import AGENTS_BIN
from tests.realagents.harness import (
    AGENTS,
    Agent,
    Stack,
    readiness_problem,
    write_wrapper,
)
from tests.realagents.modelserver import API_KEY, ModelServer


@pytest.fixture(scope="session")
def realagents_ready() -> None:
    """Fail (never skip) when the suite cannot run here, saying how to fix it."""
    problem = readiness_problem()
    if problem:
        pytest.fail(f"realagents: {problem}", pytrace=False)


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    # a short path: a Unix socket path must fit in 108 bytes
    with tempfile.TemporaryDirectory(prefix="rm-", dir="/tmp") as tmp:
        server = ModelServer(Path(tmp) / "model.sock")
        await server.start()
        yield server
        await server.close()


@pytest.fixture(params=sorted(AGENTS))
def agent(request: pytest.FixtureRequest, realagents_ready: None) -> Agent:
    return AGENTS[request.param]


async def make_stack(
    agent: Agent,
    model: ModelServer,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    workspace_id: str,
    *,
    api_key: str | None = API_KEY,
) -> Stack:
    data_dir = (tmp_path / "data").resolve()
    logdir = tmp_path / "logs"
    data_dir.mkdir()
    logdir.mkdir()
    wrapper = write_wrapper(
        tmp_path / f"{agent.binary}-offline",
        AGENTS_BIN / agent.binary,
        model.socket_path,
    )
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"ra-{uuid.uuid4().hex[:8]}",
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "INFO",
        "PG_POOL_MAX": "4",
        agent.bin_setting: str(wrapper),
        **agent.env(tmp_path, api_key),
    }
    http = aiohttp.ClientSession()
    return Stack(agent, model, env, data_dir, logdir, workspace_id, http)


@pytest.fixture
async def stack(
    agent: Agent,
    model: ModelServer,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    workspace_id: str,
) -> AsyncIterator[Stack]:
    s = await make_stack(agent, model, tmp_path, database_url, redis_url, workspace_id)
    try:
        yield s
    finally:
        await s.close()
        await s.http.close()


@pytest.fixture(params=["missing", "refused"])
async def stack_without_credentials(
    request: pytest.FixtureRequest,
    agent: Agent,
    model: ModelServer,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    workspace_id: str,
) -> AsyncIterator[Stack]:
    """As `stack`, but AGENT_ENV_* names a key the gateway's environment lacks
    ("missing") or one the model API refuses ("refused"); `stack.credentials` says which."""
    api_key = None if request.param == "missing" else "sk-wrong-key"
    s = await make_stack(
        agent, model, tmp_path, database_url, redis_url, workspace_id, api_key=api_key
    )
    s.credentials = request.param
    try:
        yield s
    finally:
        await s.close()
        await s.http.close()


@pytest.fixture
async def claude_stack(
    model: ModelServer,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    workspace_id: str,
    realagents_ready: None,
) -> AsyncIterator[Stack]:
    """A stack for claude-agent-acp alone (what only it offers: gateway authentication)."""
    s = await make_stack(
        AGENTS["claude"], model, tmp_path, database_url, redis_url, workspace_id
    )
    try:
        yield s
    finally:
        await s.close()
        await s.http.close()
