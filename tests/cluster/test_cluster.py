"""The product on a real Redis Cluster (3 masters, 3 replicas) with real processes.

Gateways and the query service take `REDIS_URL=redis+cluster://…`, so session events go
over sharded pub/sub (SPUBLISH/SSUBSCRIBE on the session's slot), the list cache and its
invalidation run as one-slot scripts, and lifecycle, control and forwarding use plain
pub/sub, which a cluster broadcasts to every node. Covered: a session's whole life, an SSE
stream on one gateway for a session owned by another, and a master failover of the
session channel's slot in the middle of a stream with nothing lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.crc import key_slot

from shared.channels import Channels
from shared.redisconn import create_redis, pubsub_of
from tests.cluster.harness import RedisClusterServers
from tests.gateway.rpcutil import events, kinds, wait_ready
from tests.scaleout.support import (
    Services,
    Subscriber,
    rpc,
    running_services,
    service_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAIT = 60.0  # hang guard only


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers() as servers:
        yield servers


@dataclass
class Deployment(Services):
    """Two gateways (gw1, gw2) and a query service (query) on the cluster."""

    cluster: RedisClusterServers
    prefix: str

    async def new_session(self, gateway: str, workspace_id: str, pool: Any) -> str:
        reply, via = await rpc(
            self.http, self.url(gateway), "session/new", {"workspaceId": workspace_id}
        )
        assert via == gateway, reply
        sid = str(reply["result"]["sessionId"])
        await wait_ready(pool, sid)
        return sid

    async def prompt(self, gateway: str, sid: str, text: str) -> dict[str, Any]:
        reply, _ = await rpc(
            self.http,
            self.url(gateway),
            "session/prompt",
            {"sessionId": sid, "prompt": text},
        )
        assert "error" not in reply, reply
        return reply

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(self.url("query") + path, params=params) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    def session_slot(self, sid: str) -> int:
        return key_slot(Channels(self.prefix).session_events(sid).encode())


@pytest.fixture
async def deployment(
    cluster: RedisClusterServers, settings: Any, tmp_path: Path
) -> AsyncIterator[Deployment]:
    env = service_env(settings, tmp_path, "cluster", REDIS_URL=cluster.url)
    modules = {
        "gw1": "services.gateway",
        "gw2": "services.gateway",
        "query": "services.query",
    }
    async with running_services(modules, env, tmp_path / "logs") as services:
        yield Deployment(services.http, services.procs, cluster, env["REDIS_PREFIX"])


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not await predicate():
            await asyncio.sleep(0.05)


async def _true(value: bool) -> bool:
    return value


async def _lifecycle(
    d: Deployment, workspace_id: str, out: list[dict[str, Any]]
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with d.http.get(
        d.url("query") + "/api/sessions/events",
        params={"workspaceId": workspace_id},
        timeout=timeout,
    ) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                out.append(orjson.loads(line[5:]))


async def test_session_whole_life_on_a_cluster(
    deployment: Deployment, pool: Any, workspace_id: str
) -> None:
    d = deployment
    # the query service's lifecycle stream: its hub's PSUBSCRIBE sits on one node and
    # sees the gateway's PUBLISH, which the cluster broadcasts
    lifecycle: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_lifecycle(d, workspace_id, lifecycle))
    await _until(lambda: _true(bool(lifecycle)))  # the "connected" frame
    sid = await d.new_session("gw1", workspace_id, pool)
    sub = Subscriber(d.http, d.url("gw1"), sid)
    sub.start()
    try:
        await sub.wait_for(lambda s: s.connects >= 1)
        reply = await d.prompt("gw1", sid, "hello cluster")
        assert reply["result"]["stopReason"] == "end_turn"
        await sub.wait_for(lambda s: "turn_complete" in s.kinds())
        stored = await events(pool, sid)
        assert [p for _, p in sub.events] == stored  # live over SSUBSCRIBE, in order

        history = (await d.get(f"/api/sessions/{sid}/history"))["history"]
        assert len(history) == len(stored)
        text = "".join(
            e["update"]["content"]["text"]
            for e in stored
            if e["update"]["sessionUpdate"] == "agent_message_chunk"
        )
        assert "hello cluster" in text

        # the list twice (the second from the cache), then a rename that the very
        # next list shows: the one-slot invalidation keeps read-your-writes
        for _ in range(2):
            listed = (await d.get("/api/sessions", workspaceId=workspace_id))[
                "sessions"
            ]
            assert [s["sessionId"] for s in listed] == [sid]
        async with d.http.patch(
            f"{d.url('query')}/api/sessions/{sid}", json={"name": "renamed"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        listed = (await d.get("/api/sessions", workspaceId=workspace_id))["sessions"]
        assert listed[0]["name"] == "renamed"

        # delete: the query service tells the owner (control channel) to stop it
        async with d.http.delete(f"{d.url('query')}/api/sessions/{sid}") as resp:
            assert resp.status in (200, 204), await resp.text()
        listed = (await d.get("/api/sessions", workspaceId=workspace_id))["sessions"]
        assert listed == []

        async def agent_stopped() -> bool:
            async with d.http.get(d.url("gw1") + "/metrics") as resp:
                text = await resp.text()
            line = next(
                x
                for x in text.splitlines()
                if x.startswith("routa_agent_processes_live ")
            )
            return float(line.split()[1]) == 0

        await _until(agent_stopped)
        await _until(
            lambda: _true(any(m["type"] == "session:deleted" for m in lifecycle))
        )
        types = [m["type"] for m in lifecycle if m.get("sessionId") == sid]
        assert types[0] == "session:created"
        assert "session:updated" in types
    finally:
        watcher.cancel()
        await sub.close()


async def test_sse_on_another_gateway_and_forwarding(
    deployment: Deployment, pool: Any, workspace_id: str
) -> None:
    """gw1 owns the session; gw2 streams it and forwards a prompt to gw1."""
    d = deployment
    sid = await d.new_session("gw1", workspace_id, pool)
    sub = Subscriber(d.http, d.url("gw2"), sid)
    sub.start()
    try:
        await sub.wait_for(lambda s: s.connects >= 1)
        await d.prompt("gw1", sid, "from the owner")
        await sub.wait_for(lambda s: s.kinds().count("turn_complete") == 1)
        # a prompt sent to gw2 is forwarded over the gateway link to the owner
        await d.prompt("gw2", sid, "through gw2")
        await sub.wait_for(lambda s: s.kinds().count("turn_complete") == 2)
        assert set(sub.served_by) == {"gw2"}
        assert sub.connects == 1  # all live: no reconnect was needed
        assert [p for _, p in sub.events] == await events(pool, sid)
    finally:
        await sub.close()


async def test_master_failover_mid_stream_loses_nothing(
    deployment: Deployment, pool: Any, workspace_id: str
) -> None:
    d = deployment
    sid = await d.new_session("gw1", workspace_id, pool)
    slot = d.session_slot(sid)
    subs = [Subscriber(d.http, d.url(gw), sid) for gw in ("gw1", "gw2")]
    for sub in subs:
        sub.start()
    try:
        for sub in subs:
            await sub.wait_for(lambda s: s.connects >= 1)
        turn = asyncio.create_task(d.prompt("gw1", sid, "/slow 3"))
        for sub in subs:
            await sub.wait_for(lambda s: s.kinds().count("agent_message_chunk") >= 3)
        old, new = await asyncio.to_thread(d.cluster.failover, slot)
        assert d.cluster.master_of_slot(slot).port == new.port != old.port
        await turn
        for sub in subs:
            await sub.wait_for(lambda s: "turn_complete" in s.kinds())
        # after the failover the session channel lives on the new master: a new turn
        # is delivered live to both gateways' streams
        await d.prompt("gw1", sid, "after failover")
        for sub in subs:
            await sub.wait_for(lambda s: s.kinds().count("turn_complete") == 2)
        stored = await events(pool, sid)
        for sub in subs:
            # Subscriber asserts every id is last + 1: no gap, no repeat
            assert [p for _, p in sub.events] == stored
        assert kinds(stored).count("agent_message_chunk") >= 30

        # one sharded subscription per gateway, in the slot's shard: on its new master,
        # or on its replica (the old master) if a gateway re-subscribed there while the
        # slot map was still settling; a replica gets its shard's messages too
        channel = Channels(d.prefix).session_events(sid)
        total = 0
        for node in d.cluster.nodes:
            reply = node.cli("PUBSUB", "SHARDNUMSUB", channel).split()
            total += int(reply[-1])
        assert total == 2, d.logs()
    finally:
        for sub in subs:
            await sub.close()


async def test_commands_stream_and_lifecycle_channel_on_a_cluster(
    deployment: Deployment, pool: Any, workspace_id: str
) -> None:
    """An internal service on the cluster: a command in, its reply and lifecycle out."""
    d = deployment
    names = Channels(d.prefix)
    client = create_redis(d.cluster.url)
    try:
        pubsub = await pubsub_of(client)
        reply_to = f"{d.prefix}:test-replies:{uuid.uuid4().hex}"
        await pubsub.subscribe(names.workspace_sessions(workspace_id), reply_to)
        got: dict[str, Any] = {}

        async def read_until(done: Any) -> None:
            async with asyncio.timeout(WAIT):
                while not done():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None:
                        channel = message["channel"].decode()
                        got.setdefault(channel, []).append(
                            orjson.loads(message["data"])
                        )

        confirmed = 0
        async with asyncio.timeout(WAIT):
            while confirmed < 2:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
        request = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "session/new",
            "params": {"workspaceId": workspace_id},
        }
        await client.xadd(
            names.commands,
            {"request": orjson.dumps(request), "replyTo": reply_to},
        )
        await read_until(
            lambda: reply_to in got and names.workspace_sessions(workspace_id) in got
        )
        reply = got[reply_to][0]
        assert reply["id"] == 7, reply
        sid = reply["result"]["sessionId"]
        lifecycle = got[names.workspace_sessions(workspace_id)]
        assert {"type": "session:created", "sessionId": sid}.items() <= lifecycle[
            0
        ].items()
        await wait_ready(pool, sid)
        await pubsub.aclose()
    finally:
        await client.aclose()


async def _list_cache_hits(d: Deployment) -> float:
    """The query service's in-process (L1) list cache hits so far."""
    async with d.http.get(d.url("query") + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith('routa_cache_requests_total{result="hit_local"}'):
            return float(line.split()[-1])
    return 0.0


async def _listed(d: Deployment, workspace_id: str) -> dict[str, str]:
    sessions = (await d.get("/api/sessions", workspaceId=workspace_id))["sessions"]
    return {s["sessionId"]: s.get("name") or "" for s in sessions}


async def _until_l1_serves(d: Deployment, workspace_id: str) -> None:
    """Lists until one is answered from the L1 (it is used only while subscribed)."""

    async def served_locally() -> bool:
        before = await _list_cache_hits(d)
        await _listed(d, workspace_id)
        return await _list_cache_hits(d) > before

    await _until(served_locally)


async def test_in_process_list_cache_on_a_cluster_keeps_read_your_writes(
    deployment: Deployment, pool: Any, workspace_id: str
) -> None:
    """The L1 listens with SSUBSCRIBE on the master of the invalidations' slot: a write
    through a gateway or the query service is in the very next list, and a failover of
    that slot drops the L1, which comes back on the new master."""
    d = deployment
    first = await d.new_session("gw1", workspace_id, pool)
    await _until_l1_serves(d, workspace_id)

    second = await d.new_session("gw2", workspace_id, pool)
    assert set(await _listed(d, workspace_id)) == {first, second}
    async with d.http.patch(
        f"{d.url('query')}/api/sessions/{first}", json={"name": "renamed"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert (await _listed(d, workspace_id))[first] == "renamed"

    # the L1 holds the list again, then the slot's master fails over
    await _until_l1_serves(d, workspace_id)
    channel = Channels(d.prefix).cache_invalidations_sharded
    slot = key_slot(channel.encode())
    old, new = await asyncio.to_thread(d.cluster.failover, slot)
    hits = await _list_cache_hits(d)
    assert set(await _listed(d, workspace_id)) == {first, second}
    assert await _list_cache_hits(d) == hits, "the L1 outlived the failover"

    # subscribed again on the new master only (a replica would hear it too late)
    def subscribers(node: Any) -> int:
        return int(node.cli("PUBSUB", "SHARDNUMSUB", channel).split()[-1])

    await _until(lambda: _true(subscribers(new) == 1 and subscribers(old) == 0))
    await _until_l1_serves(d, workspace_id)
    third = await d.new_session("gw1", workspace_id, pool)
    assert set(await _listed(d, workspace_id)) == {first, second, third}
    async with d.http.patch(
        f"{d.url('query')}/api/sessions/{third}", json={"name": "after failover"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert (await _listed(d, workspace_id))[third] == "after failover"
    assert await _list_cache_hits(d) > hits
