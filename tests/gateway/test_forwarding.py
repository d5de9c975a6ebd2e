"""Several gateway apps on one Postgres/Redis: forwarding, adoption, drain.

Each app has its own INSTANCE_ID; a call for a session owned by another live instance runs
on the owner over Redis; an owner that listens no more is adopted (one winner); SIGTERM
(runner cleanup) lets running turns finish and releases the leases.
"""

from __future__ import annotations

import asyncio
import uuid

from services.gateway import jsonrpc
from services.gateway.app import create_app
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from shared.events import record
from tests.gateway.conftest import new_ready_session, user_message
from tests.gateway.rpcutil import (
    call,
    err,
    events,
    kinds,
    ok,
    wait_events,
    wait_until,
)

WAIT = 30.0


def instance(client) -> str:
    return client.app[SESSION_MANAGER].settings.instance_id


async def test_prompt_on_non_owner_runs_on_owner(new_gw, pool, workspace_id):
    a, b = await new_gw("a"), await new_gw("b")
    sid = await new_ready_session(a, pool, workspace_id)
    body = await call(b, "session/prompt", {"sessionId": sid, "prompt": "hi there"})
    assert body["result"] == {"stopReason": "end_turn"}
    assert sid in a.app[SESSION_MANAGER].live
    assert sid not in b.app[SESSION_MANAGER].live
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.owner_instance_id == instance(a)
    ks = kinds(await events(pool, sid))
    assert ks.count("user_message") == 1
    assert ks[-1] == "turn_complete"
    # load through the non-owner attaches to the owner's agent
    loaded = await ok(b, "session/load", {"sessionId": sid})
    assert loaded["resumeMode"] == "attached"


async def test_errors_pass_through_unchanged(new_gw, pool, workspace_id):
    a, b = await new_gw("a"), await new_gw("b")
    sid = await new_ready_session(a, pool, workspace_id)
    params = {"sessionId": sid, "model": "no-such-model"}
    direct = await err(a, "session/set_model", params)
    forwarded = await err(b, "session/set_model", params)
    assert forwarded == direct
    assert forwarded["code"] == -32602
    failed = await err(b, "session/prompt", {"sessionId": sid, "prompt": "/fail"})
    assert failed["code"] == -32000
    assert failed["data"]["agentError"]["message"] == "echo: asked to fail"
    assert sid not in b.app[SESSION_MANAGER].live


async def test_cancel_while_prompt_waits_on_other_instance(new_gw, pool, workspace_id):
    a, b, c = await new_gw("a"), await new_gw("b"), await new_gw("c")
    sid = await new_ready_session(a, pool, workspace_id)
    prompt = asyncio.create_task(
        call(b, "session/prompt", {"sessionId": sid, "prompt": "/slow 20"})
    )
    await wait_events(pool, sid, lambda evs: "agent_message_chunk" in kinds(evs)[-1:])
    assert await ok(c, "session/cancel", {"sessionId": sid}) == {}
    async with asyncio.timeout(WAIT):
        body = await prompt
    assert body["result"]["stopReason"] == "cancelled"
    assert not b.app[SESSION_MANAGER].live
    assert not c.app[SESSION_MANAGER].live


async def test_forwarded_call_is_never_forwarded_again(new_gw, pool, workspace_id):
    a, b = await new_gw("a"), await new_gw("b")
    sid = await new_ready_session(a, pool, workspace_id)
    request = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "session/load",
        "params": {"sessionId": sid},
    }
    reply = await jsonrpc.dispatch(b.app, request, forwarded=True)
    assert reply["id"] == 7
    assert reply["error"]["code"] == -32010
    assert instance(a) in reply["error"]["message"]


async def _orphan(pool, sid: str, ghost: str, status: str = "idle") -> None:
    """The row as a dead owner leaves it: its lease still runs, nobody listens for it."""
    await pool.execute(
        "UPDATE sessions SET owner_instance_id = $2, status = $3,"
        " lease_expires_at = now() + interval '60 seconds' WHERE session_id = $1",
        uuid.UUID(sid),
        ghost,
        status,
    )


async def test_two_instances_adopting_at_once_end_with_one_owner(
    new_gw, pool, workspace_id
):
    a, b, c = await new_gw("a"), await new_gw("b"), await new_gw("c")
    sid = await new_ready_session(a, pool, workspace_id)
    assert await ok(a, "session/prompt", {"sessionId": sid, "prompt": "one"})
    await a.app[SESSION_MANAGER].stop_quiet(sid, "disconnected")
    # a dead owner that was in the middle of a turn: its user_message has no end yet
    async with pool.acquire() as conn:
        await record(conn, uuid.UUID(sid), [user_message("two")])
    await _orphan(pool, sid, "ghost-gateway", status="active")
    loads = await asyncio.gather(
        ok(b, "session/load", {"sessionId": sid}),
        ok(c, "session/load", {"sessionId": sid}),
    )
    modes = sorted(r["resumeMode"] for r in loads)
    assert modes == ["attached", "recreated"]
    live_b = sid in b.app[SESSION_MANAGER].live
    live_c = sid in c.app[SESSION_MANAGER].live
    assert live_b != live_c
    winner = b if live_b else c
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.owner_instance_id == instance(winner)
    evs = await events(pool, sid)
    interrupted = [e for e in evs if e["update"]["sessionUpdate"] == "error"]
    assert len(interrupted) == 1
    assert "interrupted" in interrupted[0]["update"]["message"]
    # the next prompt anywhere runs on the winner
    out = await ok(a, "session/prompt", {"sessionId": sid, "prompt": "two"})
    assert out == {"stopReason": "end_turn"}
    assert sid not in a.app[SESSION_MANAGER].live


async def test_prompt_adopts_from_dead_owner(new_gw, pool, workspace_id):
    a, b = await new_gw("a"), await new_gw("b")
    sid = await new_ready_session(a, pool, workspace_id)
    await a.app[SESSION_MANAGER].stop_quiet(sid, "disconnected")
    await _orphan(pool, sid, "ghost-gateway")
    out = await ok(b, "session/prompt", {"sessionId": sid, "prompt": "back again"})
    assert out == {"stopReason": "end_turn"}
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.owner_instance_id == instance(b)
    assert "error" not in kinds(await events(pool, sid))


async def test_sigterm_drain_finishes_turn_and_releases(new_gw, pool, workspace_id):
    a, b = await new_gw("a"), await new_gw("b")
    busy = await new_ready_session(a, pool, workspace_id)
    idle = await new_ready_session(a, pool, workspace_id)
    prompt = asyncio.create_task(
        call(a, "session/prompt", {"sessionId": busy, "prompt": "/slow 1"})
    )
    await wait_events(pool, busy, lambda evs: "agent_message_chunk" in kinds(evs)[-1:])
    manager = a.app[SESSION_MANAGER]
    closing = asyncio.create_task(a.server.close())
    await wait_until(lambda: manager.draining)
    # no new sessions while draining (the balancer's retry lands elsewhere)
    refused = await jsonrpc.dispatch(
        a.app,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "session/new",
            "params": {"workspaceId": workspace_id},
        },
    )
    assert refused["error"] == {"code": -32000, "message": "Gateway draining"}
    async with asyncio.timeout(WAIT):
        body = await prompt
        await closing
    assert body["result"] == {"stopReason": "end_turn"}
    for sid in (busy, idle):
        row = await sessions.get(pool, uuid.UUID(sid))
        assert row.status == "closed"
        assert row.owner_instance_id is None
    ks = kinds(await events(pool, busy))
    assert ks[-2:] == ["turn_complete", "acp_status"]
    assert "error" not in ks
    # the session resumes on the survivor
    out = await ok(b, "session/prompt", {"sessionId": busy, "prompt": "again"})
    assert out == {"stopReason": "end_turn"}


async def test_renewal_notices_a_lease_adopted_elsewhere(new_gw, pool, workspace_id):
    a = await new_gw("a", lease_ttl=0.6)
    sid = await new_ready_session(a, pool, workspace_id)
    # as if another instance adopted it while this one was stalled
    await _orphan(pool, sid, "adopter")
    await wait_until(lambda: sid not in a.app[SESSION_MANAGER].live)
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.owner_instance_id == "adopter"  # left to the new owner


async def test_restart_with_same_instance_id_releases_stale_leases(
    make_settings, aiohttp_client, cwd_root, pool, workspace_id
):
    settings = make_settings(instance_id=f"same-{uuid.uuid4().hex[:6]}")
    sid = str(uuid.uuid4())
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=uuid.UUID(sid),
                workspace_id=workspace_id,
                cwd="/tmp",
                provider="echo",
                owner_instance_id=settings.instance_id,
                lease_ttl=60,
            ),
        )
        # the previous run died in the middle of a turn
        await record(conn, uuid.UUID(sid), [user_message("one")])
    await pool.execute(
        "UPDATE sessions SET acp_status = 'ready', status = 'active'"
        " WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert (await sessions.get(pool, uuid.UUID(sid))).status == "active"
    await aiohttp_client(create_app(settings))
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row.status == "closed"
    assert row.acp_status == "closed"
    assert row.owner_instance_id is None
    evs = await events(pool, sid)
    assert kinds(evs) == ["user_message", "error", "acp_status"]
    assert "restarted" in evs[1]["update"]["message"]
