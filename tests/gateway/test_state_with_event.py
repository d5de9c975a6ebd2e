"""A session's row and its log agree (issue 12 item 13): a status change and its event are
one write, so whoever reads the new acpStatus on the row finds its `acp_status` event.

A watcher polls each session's row directly; every time it sees acpStatus change to X it
reads the history at once, and the log must already hold at least as many `acp_status` X
events as the watcher has seen changes into X. Sessions go connecting → ready, run a turn,
and end in each of the ways the state changes: disconnect by the query service, the agent
crashing, the gateway stopping the agent, and a resume after that stop.
"""

from __future__ import annotations

import asyncio
import collections
import uuid

import asyncpg

from services.gateway.app import create_app as create_gateway
from services.gateway.keys import SESSION_MANAGER
from services.query.app import create_app as create_query
from tests.gateway.rpcutil import WAIT, call, ok, wait_events, wait_ready

SESSIONS = (
    3  # one per ending; the old code showed every change on the row before its event
)


class Watcher:
    """Polls one session's row; on each acpStatus change, checks the log holds the event."""

    def __init__(self, conn: asyncpg.Connection, sid: str) -> None:
        self.conn = conn
        self.sid = uuid.UUID(sid)
        self.seen: collections.Counter[str] = collections.Counter()
        self.missing: list[tuple[str, int, int]] = []
        self.last: str | None = None

    async def run(self) -> None:
        while True:
            status = await self.conn.fetchval(
                "SELECT acp_status FROM sessions WHERE session_id = $1", self.sid
            )
            if status is not None and status != self.last:
                self.last = status
                self.seen[status] += 1
                stored = await self.conn.fetchval(
                    "SELECT count(*) FROM session_events WHERE session_id = $1"
                    " AND kind = 'acp_status'"
                    " AND payload::jsonb -> 'update' ->> 'status' = $2",
                    self.sid,
                    status,
                )
                if stored < self.seen[status]:
                    self.missing.append((status, self.seen[status], stored))
            await asyncio.sleep(0.002)


async def test_row_state_is_never_ahead_of_its_event(
    make_settings, aiohttp_client, database_url, cwd_root, pool, workspace_id
):
    settings = make_settings()
    gw = await aiohttp_client(create_gateway(settings))
    q = await aiohttp_client(create_query(settings))
    manager = gw.app[SESSION_MANAGER]
    missing: list[tuple[str, tuple[str, int, int]]] = []
    seen = 0
    for n in range(SESSIONS):
        sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
        watcher = Watcher(await asyncpg.connect(database_url), sid)
        task = asyncio.create_task(watcher.run())
        try:
            await wait_ready(pool, sid)
            out = await ok(gw, "session/prompt", {"sessionId": sid, "prompt": "hi"})
            assert out["stopReason"] == "end_turn"
            ending = n % 3
            if ending == 0:
                resp = await q.post(f"/api/sessions/{sid}/disconnect")
                assert resp.status == 200, await resp.text()
                final, times = "closed", 1
            elif ending == 1:
                await call(gw, "session/prompt", {"sessionId": sid, "prompt": "/crash"})
                final, times = "error", 1
            else:
                await manager.live[sid].stop(reason="idle")
                await ok(gw, "session/load", {"sessionId": sid})  # resumed here
                final, times = "ready", 2
            await wait_events(pool, sid, lambda evs: _count(evs, final) >= times)  # noqa: B023
            # the watcher has seen the final state before it stops
            async with asyncio.timeout(WAIT):
                while watcher.last != final or watcher.seen[final] < times:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watcher.conn.close()
        missing += [(sid, m) for m in watcher.missing]
        seen += sum(watcher.seen.values())
    assert missing == [], f"row ahead of its event (status, seen, stored): {missing}"
    assert seen >= SESSIONS * 2  # the watchers did see the changes they checked


def _count(evs, status: str) -> int:
    return sum(
        1
        for e in evs
        if e["update"]["sessionUpdate"] == "acp_status"
        and e["update"].get("status") == status
    )


def _has(status: str):
    return lambda evs: _count(evs, status) >= 1
