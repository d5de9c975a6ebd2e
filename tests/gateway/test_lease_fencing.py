"""Lost owners and stale owners (in-process gateways on one Postgres/Redis).

A session whose owner's lease ran out is closed by a surviving instance without any call,
its open turn ended by exactly one `error`. An instance whose lease generation is no
longer current (another instance took the session over) stores no event, no state and
no file, and stops its agent.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from acp.exceptions import RequestError

from services.gateway.agents import _Client
from services.gateway.keys import SESSION_MANAGER
from shared.db import sessions
from shared.events import gateway_update, record
from tests.gateway.conftest import user_message
from tests.gateway.rpcutil import (
    call,
    events,
    kinds,
    ok,
    wait_events,
    wait_ready,
    wait_until,
)

WAIT = 30.0  # hang guard only


async def _dead_owner_row(pool, workspace_id: str, log: list[dict]) -> str:
    """A session as an owner that died leaves it: its lease ran out, status as it was."""
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid,
                workspace_id=workspace_id,
                cwd="/tmp",
                provider="echo",
                acp_status="ready",
                status="active",
                owner_instance_id=f"dead-{uuid.uuid4().hex[:6]}",
                lease_ttl=60,
            ),
        )
        await record(conn, sid, log)
        await conn.execute(
            "UPDATE sessions SET lease_expires_at = now() - interval '1 second'"
            " WHERE session_id = $1",
            sid,
        )
    return str(sid)


async def _raw(pool, sid: str):
    return await pool.fetchrow(
        "SELECT owner_instance_id, status, acp_status FROM sessions"
        " WHERE session_id = $1",
        uuid.UUID(sid),
    )


async def _wait_released(pool, sid: str) -> None:
    async with asyncio.timeout(WAIT):
        while (await _raw(pool, sid))["owner_instance_id"] is not None:
            await asyncio.sleep(0.05)


async def test_sweeper_ends_a_dead_owners_turn_once_without_a_call(
    new_gw, pool, workspace_id
):
    # two survivors sweep: exactly one of them closes the session
    b, c = await new_gw("b"), await new_gw("c")
    sid = await _dead_owner_row(
        pool,
        workspace_id,
        [gateway_update("acp_status", status="ready"), user_message("/slow 30")],
    )
    evs = await wait_events(pool, sid, lambda evs: kinds(evs)[-1:] == ["acp_status"])
    assert kinds(evs) == ["acp_status", "user_message", "error", "acp_status"]
    assert "was lost" in evs[2]["update"]["message"]
    assert evs[3]["update"]["status"] == "closed"
    row = await _raw(pool, sid)
    assert tuple(row) == (None, "closed", "closed")
    # later sweeps, on either survivor, change nothing
    for gw in (b, c):
        await gw.app[SESSION_MANAGER].leases.sweep()
    assert kinds(await events(pool, sid)) == kinds(evs)


async def test_sweeper_writes_no_second_end_event(new_gw, pool, workspace_id):
    """The owner stored the turn's end, then died before writing its status."""
    await new_gw("b")
    sid = await _dead_owner_row(
        pool,
        workspace_id,
        [
            user_message("hi"),
            gateway_update("turn_complete", stopReason="end_turn"),
        ],
    )
    await _wait_released(pool, sid)
    assert kinds(await events(pool, sid)) == [
        "user_message",
        "turn_complete",
        "acp_status",
    ]


async def test_a_stale_owner_stores_nothing_and_stops_its_agent(
    new_gw, pool, workspace_id
):
    a = await new_gw("a")
    manager = a.app[SESSION_MANAGER]
    sid = (await ok(a, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    prompt = asyncio.create_task(
        call(a, "session/prompt", {"sessionId": sid, "prompt": "/slow 30"})
    )
    await wait_events(pool, sid, lambda evs: "agent_message_chunk" in kinds(evs))
    # another instance takes the session over (as after a pause longer than the lease)
    taken_at = await pool.fetchval(
        "UPDATE sessions SET owner_instance_id = 'adopter', status = 'idle',"
        " lease_generation = lease_generation + 1,"
        " lease_expires_at = now() + interval '60 seconds'"
        " WHERE session_id = $1 RETURNING last_event_id",
        uuid.UUID(sid),
    )
    await wait_until(lambda: sid not in manager.live)
    async with asyncio.timeout(WAIT):
        reply = await prompt
    assert "error" in reply, reply
    evs = await events(pool, sid)
    assert int(evs[-1]["eventId"]) == taken_at, kinds(evs)[-5:]
    assert "turn_complete" not in kinds(evs)
    row = await _raw(pool, sid)
    assert tuple(row) == ("adopter", "idle", "ready")  # the stale owner wrote no state


async def test_a_stale_owner_writes_no_file(new_gw, pool, workspace_id, cwd_root):
    a = await new_gw("a")
    manager = a.app[SESSION_MANAGER]
    sid = (await ok(a, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    live = manager.live[sid]
    assert live.agent is not None
    client = _Client(live.agent)
    allowed = live.cwd / "allowed.txt"
    await client.write_text_file(live.routa_agent_id or "", str(allowed), "ours")
    assert allowed.read_text() == "ours"
    await pool.execute(
        "UPDATE sessions SET owner_instance_id = 'adopter',"
        " lease_generation = lease_generation + 1 WHERE session_id = $1",
        uuid.UUID(sid),
    )
    fenced = live.cwd / "fenced.txt"
    with pytest.raises(RequestError):
        await client.write_text_file(live.routa_agent_id or "", str(fenced), "late")
    assert not fenced.exists()
    await wait_until(lambda: sid not in manager.live)  # and its agent is stopped


async def test_disconnect_fences_the_owner(pool, workspace_id):
    """The query service's disconnect releases the lease at a new generation."""
    sid = await _dead_owner_row(pool, workspace_id, [user_message("hi")])
    before = await pool.fetchval(
        "SELECT lease_generation FROM sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    assert await sessions.close_and_release(pool, uuid.UUID(sid)) is not None
    assert not await sessions.holds_generation(pool, uuid.UUID(sid), before)
    assert await sessions.holds_generation(pool, uuid.UUID(sid), before + 1)
