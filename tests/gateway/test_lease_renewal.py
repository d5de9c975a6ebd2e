"""Lease renewal survives a saturated event loop (in-process gateways, real Postgres).

The loop is blocked on purpose (time.sleep in tasks on the test's own loop, which the
gateways share): each loop iteration then takes longer than LEASE_TTL. A renewal on that
loop needs several iterations, so the lease ran out (and the idle second gateway's sweeper
could close the session). The renewal thread keeps the lease; a witness thread with its
own connection samples the row while the loop is blocked (the loop cannot watch itself).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from services.gateway.app import create_app
from services.gateway.keys import GATEWAY_LINK, SESSION_MANAGER
from tests.gateway.rpcutil import ok, wait_ready, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # hang guard only
LEASE_TTL = 2.0
# Four tasks blocking 0.3 LEASE_TTL each per loop iteration: every iteration lasts 1.2
# LEASE_TTL, for 5 LEASE_TTL in all.
HOGS = 4
HOG_CHUNK = 0.3 * LEASE_TTL
SATURATION = 5 * LEASE_TTL


@dataclass
class Sample:
    owner: str | None
    generation: int
    seconds_left: float | None


class LeaseWatch:
    """Samples one session's lease from a thread with its own loop and connection."""

    def __init__(self, database_url: str, session_id: uuid.UUID) -> None:
        self.database_url = database_url
        self.session_id = session_id
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self.expired = threading.Event()  # set on the first lapsed sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "lease watch did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._poll())
        except BaseException as err:  # re-raised on the test's side
            self.error = err

    async def _poll(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            while not self._stop.is_set():
                row = await conn.fetchrow(
                    "SELECT owner_instance_id, lease_generation,"
                    " extract(epoch FROM lease_expires_at - now())::float8 AS left"
                    " FROM sessions WHERE session_id = $1",
                    self.session_id,
                )
                assert row is not None
                sample = Sample(
                    row["owner_instance_id"], row["lease_generation"], row["left"]
                )
                self.samples.append(sample)
                if sample.seconds_left is None or sample.seconds_left <= 0:
                    self.expired.set()
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def lapsed(self) -> list[Sample]:
        return [
            s for s in self.samples if s.seconds_left is None or s.seconds_left <= 0
        ]


async def _hog(until: float) -> None:
    """Block the loop in chunks, yielding once between them (a saturated core)."""
    while time.monotonic() < until:
        time.sleep(HOG_CHUNK)
        await asyncio.sleep(0)


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    async def _make(name: str):
        settings = make_settings(
            instance_id=f"{name}-{uuid.uuid4().hex[:6]}", lease_ttl=LEASE_TTL
        )
        client = await aiohttp_client(create_app(settings))
        await wait_until(lambda: client.app[GATEWAY_LINK].subscribed)
        return client

    return _make


async def _owned_session(gw, pool, workspace_id: str) -> tuple[str, int]:
    sid = (await ok(gw, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    live = gw.app[SESSION_MANAGER].live[sid]
    assert live.writer.generation is not None
    return sid, live.writer.generation


async def test_a_saturated_loop_keeps_its_leases(
    make_gw, pool, workspace_id, database_url
):
    a = await make_gw("a")
    await make_gw("b")  # idle: its sweeper closes any session whose lease ran out
    manager = a.app[SESSION_MANAGER]
    owner = a.app[SESSION_MANAGER].settings.instance_id
    sid, generation = await _owned_session(a, pool, workspace_id)

    with LeaseWatch(database_url, uuid.UUID(sid)) as watch:
        until = time.monotonic() + SATURATION
        await asyncio.gather(*(_hog(until) for _ in range(HOGS)))
        # the watch saw the row throughout (it is not starved by the blocked loop)
        assert len(watch.samples) >= 10, len(watch.samples)
    assert watch.lapsed() == [], watch.lapsed()[:5]
    assert {(s.owner, s.generation) for s in watch.samples} == {(owner, generation)}

    # the session is still ours, and serves a turn
    live = manager.live.get(sid)
    assert live is not None
    assert not live.stopping
    reply = await ok(a, "session/prompt", {"sessionId": sid, "prompt": "on"})
    assert reply == {"stopReason": "end_turn"}
    row = await pool.fetchrow(
        "SELECT owner_instance_id, lease_generation FROM sessions WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert tuple(row) == (owner, generation)


async def test_the_renewal_stops_a_session_taken_over(make_gw, pool, workspace_id):
    """Idle (no write, no side effect to notice it): only the renewal finds it taken."""
    a = await make_gw("a")
    manager = a.app[SESSION_MANAGER]
    sid, _ = await _owned_session(a, pool, workspace_id)
    await pool.execute(
        "UPDATE sessions SET owner_instance_id = 'adopter',"
        " lease_generation = lease_generation + 1,"
        " lease_expires_at = now() + interval '60 seconds'"
        " WHERE session_id = $1",
        uuid.UUID(sid),
    )
    await wait_until(lambda: sid not in manager.live)
    row = await pool.fetchrow(
        "SELECT owner_instance_id, status FROM sessions WHERE session_id = $1",
        uuid.UUID(sid),
    )
    assert row["owner_instance_id"] == "adopter"  # the stale owner released nothing


async def test_a_wedged_loop_lets_its_leases_lapse(
    make_gw, pool, workspace_id, database_url
):
    """Busy is not stuck: with no heartbeat from the loop for `stall_limit`, the thread
    stops renewing (another instance may then take over); renewal resumes after."""
    a = await make_gw("a")
    renewer = a.app[SESSION_MANAGER].leases.renewer
    assert renewer is not None
    sid, _ = await _owned_session(a, pool, workspace_id)
    renewer.stall_limit = LEASE_TTL / 2
    with LeaseWatch(database_url, uuid.UUID(sid)) as watch:
        # wedge the loop (one blocking call) until the lease is seen lapsed
        assert watch.expired.wait(WAIT), watch.samples[-5:]
    renewer.stall_limit = 60.0
    async with asyncio.timeout(WAIT):
        while not await pool.fetchval(
            "SELECT lease_expires_at > now() FROM sessions WHERE session_id = $1",
            uuid.UUID(sid),
        ):
            await asyncio.sleep(0.05)
    assert sid in a.app[SESSION_MANAGER].live


async def test_cleanup_stops_the_renewal_thread(make_gw, workspace_id, pool):
    a = await make_gw("a")
    await _owned_session(a, pool, workspace_id)
    renewer = a.app[SESSION_MANAGER].leases.renewer
    assert renewer is not None
    assert renewer.running
    await a.close()
    assert not renewer.running
