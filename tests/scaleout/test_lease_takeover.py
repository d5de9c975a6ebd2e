"""An owner lost or paused mid-turn, with real gateway processes (no balancer needed).

LEASE_TTL is 2 s. A SIGKILLed owner's interrupted turn gets its one `error` event from the
survivor with no further client call; an owner paused (SIGSTOP) past its lease and taken
over by another instance stores nothing after it is continued (SIGCONT).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway.rpcutil import events, kinds, wait_ready
from tests.scaleout.support import (
    Services,
    Subscriber,
    rpc,
    running_services,
    service_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

WAIT = 60.0  # hang guard only
LEASE_TTL = 2.0
# Far above the rule (the turn ends within LEASE_TTL + 2 s), far below "never".
END_EVENT_BOUND = 30.0
ENDS = ("turn_complete", "error")


@pytest.fixture
async def pair(settings, tmp_path) -> AsyncIterator[Services]:
    """Two gateways, gw1 and gw2, with a short lease."""
    env = service_env(settings, tmp_path, "lease", LEASE_TTL=str(LEASE_TTL))
    modules = {"gw1": "services.gateway", "gw2": "services.gateway"}
    async with running_services(modules, env, tmp_path / "logs") as services:
        yield services


async def _new_on(p: Services, name: str, pool: Any, workspace_id: str) -> str:
    reply, via = await rpc(
        p.http, p.url(name), "session/new", {"workspaceId": workspace_id}
    )
    assert via == name
    sid = str(reply["result"]["sessionId"])
    await wait_ready(pool, sid)
    return sid


def _start_turn(p: Services, name: str, sid: str, text: str) -> asyncio.Task[Any]:
    async def _post() -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await rpc(
                p.http,
                p.url(name),
                "session/prompt",
                {"sessionId": sid, "prompt": text},
            )

    return asyncio.create_task(_post())


def _last_turn(evs: list[dict[str, Any]]) -> list[str]:
    ks = kinds(evs)
    start = len(ks) - 1 - ks[::-1].index("user_message")
    return ks[start:]


async def _live_agents(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    line = next(
        x for x in text.splitlines() if x.startswith("routa_agent_processes_live ")
    )
    return float(line.split()[1])


async def test_killed_owner_turn_ends_without_any_call(
    pair: Services, pool, workspace_id
):
    p = pair
    sid = await _new_on(p, "gw1", pool, workspace_id)
    sub = Subscriber(p.http, p.url("gw2"), sid)
    sub.start()
    await sub.wait_for(lambda s: s.connects >= 1)
    prompt = _start_turn(p, "gw1", sid, "/slow 30")
    await sub.wait_for(lambda s: s.kinds()[-1:] == ["agent_message_chunk"])

    p.procs["gw1"].signal(signal.SIGKILL)
    assert await p.procs["gw1"].wait_exit() == -signal.SIGKILL
    await prompt  # its connection broke; no further call is made below until the end
    async with asyncio.timeout(END_EVENT_BOUND):
        await sub.wait_for(
            lambda s: any(k in ENDS for k in _last_turn([e for _, e in s.events]))
        )
    await sub.wait_for(lambda s: s.kinds()[-1:] == ["acp_status"])
    turn = _last_turn([e for _, e in sub.events])
    assert [k for k in turn if k in ENDS] == ["error"], turn
    error = next(e for _, e in sub.events if e["update"]["sessionUpdate"] == "error")
    assert "gw1" in error["update"]["message"]
    assert "lost" in error["update"]["message"]
    assert sub.events[-1][1]["update"]["status"] == "closed"
    row = await pool.fetchrow(
        "SELECT owner_instance_id, status FROM sessions WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert tuple(row) == (None, "closed")
    assert [params for _, params in sub.events] == await events(pool, sid)

    # resumable on the survivor; the interrupted turn never gets a second end
    reply, via = await rpc(
        p.http,
        p.url("gw2"),
        "session/prompt",
        {"sessionId": sid, "prompt": "on"},
    )
    assert via == "gw2"
    assert reply.get("result") == {"stopReason": "end_turn"}, reply
    ks = kinds(await events(pool, sid))
    assert ks.count("error") == 1, ks
    assert ks.count("turn_complete") == 1, ks
    assert ks.count("user_message") == 2, ks
    await sub.close()


async def test_paused_owner_writes_nothing_after_takeover(
    pair: Services, pool, workspace_id
):
    p = pair
    gw1, gw2 = p.procs["gw1"], p.procs["gw2"]
    sid = await _new_on(p, "gw1", pool, workspace_id)
    prompt = _start_turn(p, "gw1", sid, "/slow 30")
    await _wait_log(pool, sid, lambda evs: kinds(evs)[-1:] == ["agent_message_chunk"])

    gw1.signal(signal.SIGSTOP)
    # paused past its lease (its agent keeps sending ticks into the pipe meanwhile) ...
    async with asyncio.timeout(WAIT):
        while await pool.fetchval(
            "SELECT lease_expires_at > now() FROM sessions WHERE session_id = $1",
            uuid.UUID(sid),
        ):
            await asyncio.sleep(0.1)
    # ... and taken over by gw2
    reply, via = await rpc(p.http, gw2.url, "session/load", {"sessionId": sid})
    assert via == "gw2"
    assert reply.get("result", {}).get("resumeMode") == "recreated", reply
    await _wait_log(pool, sid, lambda evs: evs[-1]["update"].get("status") == "ready")
    taken = await pool.fetchrow(
        "SELECT owner_instance_id, status, acp_status, last_event_id FROM sessions"
        " WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert tuple(taken)[:3] == ("gw2", "idle", "ready")

    gw1.signal(signal.SIGCONT)
    # gw1 reads the buffered ticks, finds its lease taken, stops its agent
    async with asyncio.timeout(WAIT):
        while await _live_agents(p.http, gw1.url) > 0:
            await asyncio.sleep(0.1)
    await prompt
    evs = await events(pool, sid)
    late = [e for e in evs if int(e["eventId"]) > taken["last_event_id"]]
    assert late == [], kinds(late)
    after = await pool.fetchrow(
        "SELECT owner_instance_id, status, acp_status FROM sessions"
        " WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert tuple(after) == tuple(taken)[:3]
    ks = kinds(evs)
    assert ks.count("user_message") == 1
    assert [k for k in _last_turn(evs) if k in ENDS] == ["error"], ks

    # the new owner serves the session
    reply, via = await rpc(
        p.http, gw2.url, "session/prompt", {"sessionId": sid, "prompt": "mine"}
    )
    assert via == "gw2"
    assert reply.get("result") == {"stopReason": "end_turn"}, reply


async def _wait_log(pool: Any, sid: str, predicate: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate(await events(pool, sid)):
            await asyncio.sleep(0.05)
