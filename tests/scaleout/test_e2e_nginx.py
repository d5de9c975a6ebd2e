"""End to end behind real nginx: 2 gateways, 2 query services, Postgres, Redis.

nginx runs deploy/nginx/prod.conf (round-robin, no sticky sessions) with this test's ports.
Calls and streams land on both gateways; every subscriber gets every event in order; a
gateway SIGKILLed mid-turn loses no stored event and its sessions are adopted by the
survivor; a SIGTERMed gateway lets its running turn finish.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.scaleout.support import (
    Proc,
    Subscriber,
    free_port,
    render_nginx,
    rpc,
    service_env,
    start_nginx,
    start_service,
    stop,
    wait_ready,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("nginx") is None,
        reason="nginx is not installed (.ci/run installs it from Debian's packages)",
    ),
]

WAIT = 60.0


@dataclass
class Cluster:
    http: aiohttp.ClientSession
    env: dict[str, str]
    logdir: Path
    url: str
    gateways: dict[str, Proc] = field(default_factory=dict)
    others: list[Proc] = field(default_factory=list)

    def start_gateway(self, name: str, port: int) -> Proc:
        proc = start_service("services.gateway", name, port, self.env, self.logdir)
        self.gateways[name] = proc
        return proc

    async def session(self, sid: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/api/sessions/{sid}") as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["session"]

    async def history(self, sid: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/api/sessions/{sid}/history") as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["history"]

    async def wait_session(self, sid: str, predicate: Any) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                session = await self.session(sid)
                if predicate(session):
                    return session
                await asyncio.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.tail()}" for p in [*self.gateways.values(), *self.others]
        )


@pytest.fixture
async def cluster(settings, tmp_path) -> AsyncIterator[Cluster]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    env = service_env(settings, tmp_path, "e2e", LEASE_TTL="3", DRAIN_GRACE="20")
    gw_ports = [free_port(), free_port()]
    q_ports = [free_port(), free_port()]
    listen = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx(gw_ports, q_ports, listen, prefix))
    http = aiohttp.ClientSession()
    c = Cluster(http, env, logdir, f"http://127.0.0.1:{listen}")
    try:
        for i, port in enumerate(gw_ports, 1):
            c.start_gateway(f"gw{i}", port)
        for i, port in enumerate(q_ports, 1):
            c.others.append(start_service("services.query", f"q{i}", port, env, logdir))
        c.others.append(start_nginx(conf, prefix, listen, logdir))
        for proc in [*c.gateways.values(), *c.others[:2]]:
            await wait_ready(http, proc.url, "/readyz")
        await wait_ready(http, c.url, "/healthz")
        yield c
    except BaseException:
        print(c.logs())  # noqa: T201 - shown by pytest when the test fails
        raise
    finally:
        await http.close()
        for proc in [*c.gateways.values(), *c.others]:
            stop(proc)


async def _new_sessions(c: Cluster, workspace_id: str, n: int) -> dict[str, str]:
    """n sessions through nginx → {sessionId: ownerInstanceId}."""
    owners: dict[str, str] = {}
    for _ in range(n):
        reply, _ = await rpc(
            c.http, c.url, "session/new", {"workspaceId": workspace_id}
        )
        result = reply["result"]
        owners[result["sessionId"]] = result["ownerInstanceId"]
    for sid in owners:
        await c.wait_session(sid, lambda s: s["acpStatus"] == "ready")
    return owners


def _subscribe(c: Cluster, sid: str, n: int) -> list[Subscriber]:
    subs = [Subscriber(c.http, c.url, sid) for _ in range(n)]
    for sub in subs:
        sub.start()
    return subs


async def _assert_complete(c: Cluster, sid: str, subs: list[Subscriber]) -> None:
    """Every subscriber holds exactly the stored log, in order."""
    history = await c.history(sid)
    last = int(history[-1]["eventId"])
    assert [int(e["eventId"]) for e in history] == list(range(1, last + 1))
    for sub in subs:
        await sub.wait_for(lambda s: s.last >= last)
        assert [params for _, params in sub.events] == history


async def test_round_robin_forwarding_and_sigkill_adoption(cluster: Cluster, pool):
    c = cluster
    workspace_id = f"ws-{uuid.uuid4().hex[:8]}"
    await pool.execute(
        "INSERT INTO workspaces (id, title) VALUES ($1, $2)", workspace_id, "e2e"
    )
    owners = await _new_sessions(c, workspace_id, 4)
    assert set(owners.values()) == {"gw1", "gw2"}, "round robin reaches both"
    subs = {sid: _subscribe(c, sid, 3) for sid in owners}
    for sid_subs in subs.values():
        for sub in sid_subs:
            await sub.wait_for(lambda s: s.connects >= 1)
    served = {sub.served_by[0] for s in subs.values() for sub in s}
    assert served == {"gw1", "gw2"}, "streams land on both gateways"

    # prompts through nginx: about half reach the non-owner and are forwarded
    answered_by: set[tuple[str, str | None]] = set()
    for round_ in range(3):
        # one extra call shifts the round-robin parity between prompts and owners
        await rpc(c.http, c.url, "initialize", {})
        for sid, owner in owners.items():
            reply, via = await rpc(
                c.http,
                c.url,
                "session/prompt",
                {"sessionId": sid, "prompt": f"round {round_} for {sid[:8]}"},
            )
            assert reply.get("result") == {"stopReason": "end_turn"}, reply
            answered_by.add((owner, via))
    assert any(owner != via for owner, via in answered_by), "some were forwarded"
    for sid in owners:
        await _assert_complete(c, sid, subs[sid])
        assert (await c.session(sid))["ownerInstanceId"] == owners[sid]

    # SIGKILL gw1 in the middle of a turn of a session it owns
    victim = next(sid for sid, owner in owners.items() if owner == "gw1")
    prompt = asyncio.create_task(
        c.http.post(
            c.url + "/api/acp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "session/prompt",
                "params": {"sessionId": victim, "prompt": "/slow 3"},
            },
        )
    )
    for sub in subs[victim]:
        await sub.wait_for(lambda s: s.kinds()[-1:] == ["agent_message_chunk"])
    c.gateways["gw1"].signal(signal.SIGKILL)
    assert await c.gateways["gw1"].wait_exit() == -signal.SIGKILL
    async with asyncio.timeout(WAIT):
        resp = await prompt
    # sent to gw1 directly: nginx answers 502; forwarded by gw2: a JSON-RPC error
    if resp.status != 502:
        assert resp.status == 200
        assert "error" in await resp.json()
    resp.release()

    # the next prompt through nginx adopts the session on the survivor and resumes it
    reply, via = await rpc(
        c.http, c.url, "session/prompt", {"sessionId": victim, "prompt": "after"}
    )
    assert reply.get("result") == {"stopReason": "end_turn"}, reply
    assert via == "gw2"
    session = await c.session(victim)
    assert session["ownerInstanceId"] == "gw2"
    # nothing stored was lost: every subscriber (reconnected with Last-Event-ID) has it all
    await _assert_complete(c, victim, subs[victim])
    kinds = [e["update"]["sessionUpdate"] for e in await c.history(victim)]
    turns = kinds.count("user_message")
    assert kinds.count("turn_complete") + kinds.count("error") == turns, kinds
    assert any(sub.connects > 1 for sub in subs[victim])
    # the other sessions gw1 owned are adopted as well on their next call
    for sid, owner in owners.items():
        reply, _ = await rpc(
            c.http, c.url, "session/prompt", {"sessionId": sid, "prompt": "last"}
        )
        assert reply.get("result") == {"stopReason": "end_turn"}, reply
        await _assert_complete(c, sid, subs[sid])
        assert (await c.session(sid))["ownerInstanceId"] == "gw2", owner
    for sid_subs in subs.values():
        for sub in sid_subs:
            await sub.close()


async def test_sigterm_lets_the_running_turn_finish(cluster: Cluster, pool):
    c = cluster
    workspace_id = f"ws-{uuid.uuid4().hex[:8]}"
    await pool.execute(
        "INSERT INTO workspaces (id, title) VALUES ($1, $2)", workspace_id, "e2e"
    )
    owners = await _new_sessions(c, workspace_id, 2)
    sid = next(s for s, owner in owners.items() if owner == "gw1")
    subs = _subscribe(c, sid, 4)
    prompt = asyncio.create_task(
        rpc(c.http, c.url, "session/prompt", {"sessionId": sid, "prompt": "/slow 2"})
    )
    for sub in subs:
        await sub.wait_for(lambda s: s.kinds()[-1:] == ["agent_message_chunk"])
    gw1 = c.gateways["gw1"]
    gw1.signal(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        reply, _ = await prompt
    assert reply.get("result") == {"stopReason": "end_turn"}, reply
    assert await gw1.wait_exit() == 0
    session = await c.wait_session(sid, lambda s: s["status"] == "closed")
    assert "ownerInstanceId" not in session
    await _assert_complete(c, sid, subs)
    kinds = [e["update"]["sessionUpdate"] for e in await c.history(sid)]
    assert "error" not in kinds
    assert kinds[-2:] == ["turn_complete", "acp_status"]
    # the survivor resumes it
    reply, via = await rpc(
        c.http, c.url, "session/prompt", {"sessionId": sid, "prompt": "next"}
    )
    assert reply.get("result") == {"stopReason": "end_turn"}, reply
    assert via == "gw2"
    await _assert_complete(c, sid, subs)
    for sub in subs:
        await sub.close()
