"""Busy sessions: session/prompt's ifBusy (reject, enqueue, interrupt), dropping a queued
prompt, the queue across a gateway restart, and a workspace's maxConcurrentTurns counted
across two gateway instances. Real echo agents, Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from services.query.app import create_app as create_query
from shared.db import queued_prompts, sessions
from tests.gateway.conftest import new_ready_session
from tests.gateway.rpcutil import (
    call,
    err,
    events,
    kinds,
    ok,
    wait_events,
)


@pytest.fixture
async def gw(new_gw):
    return await new_gw()


def prompt(gw, sid: str, text: str, **extra: Any) -> asyncio.Task[dict[str, Any]]:
    """The whole JSON-RPC reply of a prompt, as a task (it waits for its turn)."""
    return asyncio.create_task(
        call(gw, "session/prompt", {"sessionId": sid, "prompt": text, **extra})
    )


async def slow_turn(gw, pool, sid: str) -> asyncio.Task[dict[str, Any]]:
    """A turn that runs until cancelled (echo's /slow), once its first chunk is stored."""
    turns = len(of_kind(await events(pool, sid), "user_message"))
    task = prompt(gw, sid, "/slow 60")

    def started(evs: list[dict[str, Any]]) -> bool:
        ks = kinds(evs)
        starts = [i for i, k in enumerate(ks) if k == "user_message"]
        return len(starts) > turns and "agent_message_chunk" in ks[starts[-1] :]

    await wait_events(pool, sid, started)
    return task


def of_kind(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["update"] for e in evs if e["update"]["sessionUpdate"] == kind]


def user_texts(evs: list[dict[str, Any]]) -> list[str]:
    return [u["content"]["text"] for u in of_kind(evs, "user_message")]


def queued_ids(evs: list[dict[str, Any]]) -> list[str]:
    return [u["queuedPromptId"] for u in of_kind(evs, "prompt_queued")]


def queued_count(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda evs: len(queued_ids(evs)) == n


async def test_reject_is_the_default_and_if_busy_is_checked(gw, pool, workspace_id):
    sid = await new_ready_session(gw, pool, workspace_id)
    for bad in ("later", 1, None, ""):
        e = await err(
            gw, "session/prompt", {"sessionId": sid, "prompt": "x", "ifBusy": bad}
        )
        assert e["code"] == -32602
        assert "ifBusy" in e["message"]
    running = await slow_turn(gw, pool, sid)
    for extra in ({}, {"ifBusy": "reject"}):
        e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "no", **extra})
        assert e["code"] == -32000
        assert e["message"] == "A prompt is already running for this session"
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert "no" not in user_texts(await events(pool, sid))
    # an idle session runs an enqueue (or interrupt) prompt at once, without queueing it
    for mode in ("enqueue", "interrupt"):
        reply = await prompt(gw, sid, f"now {mode}", ifBusy=mode)
        assert reply["result"] == {"stopReason": "end_turn"}
    evs = await events(pool, sid)
    assert "prompt_queued" not in kinds(evs)
    assert user_texts(evs)[-2:] == ["now enqueue", "now interrupt"]


async def test_enqueue_runs_in_order_after_the_running_turn(gw, pool, workspace_id):
    sid = await new_ready_session(gw, pool, workspace_id)
    running = await slow_turn(gw, pool, sid)
    first = prompt(gw, sid, "first one", ifBusy="enqueue")
    await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 1)
    second = prompt(gw, sid, "second one", ifBusy="enqueue")
    evs = await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 2)
    queued = of_kind(evs, "prompt_queued")
    assert [q["position"] for q in queued] == [1, 2]
    assert set(queued[0]) == {"sessionUpdate", "queuedPromptId", "position"}
    # durable: both are rows, in order, while the turn runs
    stored = await queued_prompts.for_session(pool, uuid.UUID(sid))
    assert [q.queued_prompt_id for q in stored] == queued_ids(evs)
    assert [q.text for q in stored] == ["first one", "second one"]
    assert not first.done()
    assert not second.done()
    # the session is still busy for a plain prompt
    e = await err(gw, "session/prompt", {"sessionId": sid, "prompt": "no"})
    assert e["message"] == "A prompt is already running for this session"

    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert (await first)["result"] == {"stopReason": "end_turn"}
    assert (await second)["result"] == {"stopReason": "end_turn"}
    evs = await events(pool, sid)
    assert user_texts(evs)[-2:] == ["first one", "second one"]
    # each queued prompt's user_message names it; each turn ends once
    messages = of_kind(evs, "user_message")
    assert [m.get("queuedPromptId") for m in messages[-2:]] == queued_ids(evs)
    assert kinds(evs).count("turn_complete") == 3
    assert "error" not in kinds(evs)
    assert await queued_prompts.for_session(pool, uuid.UUID(sid)) == []
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row is not None
    assert row.status == "idle"


async def test_interrupt_cancels_the_turn_and_goes_first(gw, pool, workspace_id):
    sid = await new_ready_session(gw, pool, workspace_id)
    running = await slow_turn(gw, pool, sid)
    queued = prompt(gw, sid, "waiting", ifBusy="enqueue")
    await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 1)
    urgent = await prompt(gw, sid, "urgent", ifBusy="interrupt")
    assert urgent["result"] == {"stopReason": "end_turn"}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert (await queued)["result"] == {"stopReason": "end_turn"}
    evs = await events(pool, sid)
    assert user_texts(evs)[-3:] == ["/slow 60", "urgent", "waiting"]
    ends = of_kind(evs, "turn_complete")
    assert [e["stopReason"] for e in ends[-3:]] == ["cancelled", "end_turn", "end_turn"]


async def test_cancel_drops_one_queued_prompt(gw, pool, workspace_id):
    sid = await new_ready_session(gw, pool, workspace_id)
    running = await slow_turn(gw, pool, sid)
    dropped = prompt(gw, sid, "drop me", ifBusy="enqueue")
    await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 1)
    kept = prompt(gw, sid, "keep me", ifBusy="enqueue")
    evs = await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 2)
    drop_id, _ = queued_ids(evs)
    for bad in ("nope", 5):
        e = await err(gw, "session/cancel", {"sessionId": sid, "queuedPromptId": bad})
        assert e["code"] == -32602
        assert "queuedPromptId" in e["message"]
    res = await ok(gw, "session/cancel", {"sessionId": sid, "queuedPromptId": drop_id})
    assert res == {}
    # its own call answers cancelled; the running turn goes on
    assert (await dropped)["result"] == {"stopReason": "cancelled"}
    assert not running.done()
    evs = await events(pool, sid)
    assert of_kind(evs, "prompt_dropped") == [
        {"sessionUpdate": "prompt_dropped", "queuedPromptId": drop_id}
    ]
    # dropping it again, or an id nobody queued: {} and nothing happens
    for qid in (drop_id, str(uuid.uuid4())):
        assert (
            await ok(gw, "session/cancel", {"sessionId": sid, "queuedPromptId": qid})
            == {}
        )
    assert await ok(gw, "session/cancel", {"sessionId": sid}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert (await kept)["result"] == {"stopReason": "end_turn"}
    evs = await events(pool, sid)
    assert "drop me" not in user_texts(evs)
    assert user_texts(evs)[-1] == "keep me"
    assert len(of_kind(evs, "prompt_dropped")) == 1


async def test_queue_survives_a_gateway_restart(new_gw, pool, workspace_id):
    first_gw = await new_gw("first", drain_grace=0.2)
    sid = await new_ready_session(first_gw, pool, workspace_id)
    running = await slow_turn(first_gw, pool, sid)
    queued = prompt(first_gw, sid, "after the restart", ifBusy="enqueue")
    await wait_events(pool, sid, lambda evs: len(queued_ids(evs)) == 1)
    # the instance goes away (drain cuts the turn short, its leases are released); its
    # callers' connections go with it
    await first_gw.close()
    await asyncio.gather(running, queued, return_exceptions=True)
    assert len(await queued_prompts.for_session(pool, uuid.UUID(sid))) == 1
    # another instance takes the queue up without being asked, and runs the prompt
    await new_gw("second")
    evs = await wait_events(
        pool,
        sid,
        lambda evs: (
            "after the restart" in user_texts(evs)
            and of_kind(evs, "turn_complete")[-1:]
            == [{"sessionUpdate": "turn_complete", "stopReason": "end_turn"}]
        ),
    )
    assert await queued_prompts.for_session(pool, uuid.UUID(sid)) == []
    text = "".join(u["content"]["text"] for u in of_kind(evs, "agent_message_chunk"))
    assert text.endswith("echo: after the restart")


async def test_workspace_cap_across_two_instances(new_gw, pool, workspace_id):
    await pool.execute(
        "UPDATE workspaces SET max_concurrent_turns = 1 WHERE id = $1", workspace_id
    )
    a, b = await new_gw("a"), await new_gw("b")
    on_a = await new_ready_session(a, pool, workspace_id)
    on_b = await new_ready_session(b, pool, workspace_id)
    running = await slow_turn(a, pool, on_a)
    # over the cap on the other instance: refused by default, naming the limit
    e = await err(b, "session/prompt", {"sessionId": on_b, "prompt": "no room"})
    assert e["code"] == -32000
    assert e["message"] == "Workspace turn limit reached"
    assert e["data"] == {"workspaceId": workspace_id, "maxConcurrentTurns": 1}
    assert "no room" not in user_texts(await events(pool, on_b))
    # enqueue waits for room; interrupt has nothing of its own to cancel: it waits too
    queued = prompt(b, on_b, "when there is room", ifBusy="enqueue")
    evs = await wait_events(pool, on_b, lambda evs: len(queued_ids(evs)) == 1)
    assert of_kind(evs, "prompt_queued")[0]["position"] == 1
    await asyncio.sleep(0.5)  # several queue ticks: still no room, nothing started
    assert not queued.done()
    assert "when there is room" not in user_texts(await events(pool, on_b))
    # the turn on instance a ends: the queued prompt on b gets the slot
    assert await ok(a, "session/cancel", {"sessionId": on_a}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert (await queued)["result"] == {"stopReason": "end_turn"}
    # while b's turn runs, a is over the cap
    running_b = await slow_turn(b, pool, on_b)
    e = await err(a, "session/prompt", {"sessionId": on_a, "prompt": "no room"})
    assert e["message"] == "Workspace turn limit reached"
    assert await ok(b, "session/cancel", {"sessionId": on_b}) == {}
    assert (await running_b)["result"] == {"stopReason": "cancelled"}
    # unlimited again: both run at once
    await pool.execute(
        "UPDATE workspaces SET max_concurrent_turns = NULL WHERE id = $1", workspace_id
    )
    both = [prompt(a, on_a, "one"), prompt(b, on_b, "two")]
    replies = await asyncio.gather(*both)
    assert [r["result"] for r in replies] == [{"stopReason": "end_turn"}] * 2


async def test_cap_counts_only_its_own_workspace(new_gw, pool, workspace_id):
    other = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute(
        "INSERT INTO workspaces (id, title, max_concurrent_turns) VALUES ($1, 'o', 1)",
        other,
    )
    await pool.execute(
        "UPDATE workspaces SET max_concurrent_turns = 1 WHERE id = $1", workspace_id
    )
    gw = await new_gw()
    mine = await new_ready_session(gw, pool, workspace_id)
    theirs = await new_ready_session(gw, pool, other)
    running = await slow_turn(gw, pool, mine)
    reply = await prompt(gw, theirs, "other workspace")
    assert reply["result"] == {"stopReason": "end_turn"}
    assert await ok(gw, "session/cancel", {"sessionId": mine}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}


async def test_disconnect_drops_the_queue(
    gw, pool, workspace_id, aiohttp_client, make_settings
):
    query = await aiohttp_client(create_query(make_settings()))
    sid = await new_ready_session(gw, pool, workspace_id)
    running = await slow_turn(gw, pool, sid)
    queued = []
    for i in range(2):
        queued.append(prompt(gw, sid, f"queued {i}", ifBusy="enqueue"))
        evs = await wait_events(pool, sid, queued_count(i + 1))
    ids = queued_ids(evs)
    resp = await query.post(f"/api/sessions/{sid}/disconnect")
    assert resp.status == 200
    assert await queued_prompts.for_session(pool, uuid.UUID(sid)) == []
    for task in queued:
        assert (await task)["result"] == {"stopReason": "cancelled"}
    assert "error" in await running
    evs = await events(pool, sid)
    assert [u["queuedPromptId"] for u in of_kind(evs, "prompt_dropped")] == ids
    assert not any(t.startswith("queued") for t in user_texts(evs))
    # nobody takes the session up again for them
    await asyncio.sleep(1.5)
    row = await sessions.get(pool, uuid.UUID(sid))
    assert row is not None
    assert row.status == "closed"


async def test_a_queued_prompt_is_dropped_only_through_its_own_session(
    gw, pool, workspace_id
):
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute(
        "INSERT INTO workspaces (id, title) VALUES ($1, 'other')", other_ws
    )
    mine = await new_ready_session(gw, pool, workspace_id)
    theirs = await new_ready_session(gw, pool, other_ws)
    running = await slow_turn(gw, pool, theirs)
    queued = prompt(gw, theirs, "theirs", ifBusy="enqueue")
    evs = await wait_events(pool, theirs, lambda evs: len(queued_ids(evs)) == 1)
    (their_id,) = queued_ids(evs)
    # another session's id, another workspace's prompt: nothing is dropped
    res = await ok(
        gw, "session/cancel", {"sessionId": mine, "queuedPromptId": their_id}
    )
    assert res == {}
    stored = await queued_prompts.for_session(pool, uuid.UUID(theirs))
    assert [q.queued_prompt_id for q in stored] == [their_id]
    assert "prompt_dropped" not in kinds(await events(pool, mine))
    assert await ok(gw, "session/cancel", {"sessionId": theirs}) == {}
    assert (await running)["result"] == {"stopReason": "cancelled"}
    assert (await queued)["result"] == {"stopReason": "end_turn"}
