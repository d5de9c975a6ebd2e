# ruff: noqa: T201
"""The benchmark suite: starts what it needs, runs each scenario next to its baseline in the
same run, prints one table. `scripts/bench` runs it; see docs/benchmarks.md.

Method (spec/perf-ceilings.md): servers on core 0, load generators and clients on core 1,
Postgres/Redis unpinned, wrk -t1 -c64 --latency, uvloop everywhere.
Env: BENCH_DURATION (s per wrk run / paced phase, default 10), BENCH_SOAK (s, default 600),
BENCH_ONLY (comma list of scenario numbers), BENCH_EVENTS (scenario 6's log size),
TEST_DATABASE_URL, TEST_REDIS_URL. `--curves` runs tests/bench/curves.py instead, `--ab REV`
tests/bench/ab.py (a paired comparison with another commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from yarl import URL

from shared.channels import Channels
from shared.db.migrate import migrate
from shared.redisconn import Redis, create_redis
from tests.bench.eventlog_gen import SESSION_COLUMNS, closed_session, copy_workspaces

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
DURATION = float(os.environ.get("BENCH_DURATION", "10"))
SOAK = float(os.environ.get("BENCH_SOAK", "600"))
SERVER_CORE, CLIENT_CORE = "0", "1"


@dataclass
class Row:
    scenario: str
    baseline: str
    product: str
    ratio: str
    target: str
    met: str


@dataclass
class Ctx:
    db_url: str
    redis_url: str
    prefix: str
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Database:
    """A fresh, migrated database on TEST_DATABASE_URL's server for one run, dropped
    afterwards (unless kept). Named `routa_<kind>_<run_id>`."""

    def __init__(self, keep: bool = False, *, kind: str = "scale") -> None:
        self.server = os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        self.run_id = uuid.uuid4().hex[:8]
        self.name = f"routa_{kind}_{self.run_id}"
        self.url = str(URL(self.server).with_path(f"/{self.name}"))
        self.keep = keep

    async def create(self) -> None:
        await migrate(self.url)

    async def drop(self) -> None:
        if self.keep:
            progress(f"kept database {self.name}")
            return
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.server)
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            await conn.close()

    async def __aenter__(self) -> Database:
        await self.create()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drop()


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def env_for(ctx: Ctx, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=ctx.db_url,
        REDIS_URL=ctx.redis_url,
        REDIS_PREFIX=ctx.prefix,
        LOG_LEVEL="WARNING",
        DATA_DIR=str(ctx.tmp / "data"),
        ALLOW_CUSTOM_COMMANDS="1",
        MAX_SESSIONS="1000",
        # scenario 3 opens 2,500 streams on one session from one address (the default
        # caps are 100 per session and 50 per client)
        MAX_SUBSCRIBERS="5000",
        MAX_CLIENT_STREAMS="0",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    )
    env.update(extra)
    return env


async def start(
    ctx: Ctx,
    args: list[str],
    port: int,
    health: str,
    *,
    core: str = SERVER_CORE,
    root: Path | str = ROOT,
    **env: str,
) -> subprocess.Popen[bytes]:
    """`args` run from the checkout `root` (another commit's, for tests/bench/ab.py),
    returning once `health` answers."""
    child_env = env_for(ctx, PORT=str(port), **env)
    if Path(root) != ROOT:
        child_env["PYTHONPATH"] = str(root)
    with open(ctx.tmp / f"{port}.log", "wb") as log:  # the child keeps its own fd
        proc = subprocess.Popen(
            ["taskset", "-c", core, PY, *args],
            cwd=root,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    ctx.procs.append(proc)
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(30):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args} exited; see {ctx.tmp}/{port}.log")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}{health}") as r:
                        if r.status < 500:
                            return proc
                await asyncio.sleep(0.1)


def stop(ctx: Ctx, proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in ctx.procs:
        ctx.procs.remove(proc)


# --- wrk -------------------------------------------------------------------------------

WRK_LUA = """
local ws = {%s}
request = function()
  return wrk.format("GET", "%s" .. ws[math.random(#ws)] .. "&limit=50")
end
"""


def wrk(
    url: str,
    workspaces: list[str] | None = None,
    path: str = "",
    duration: float | None = None,
) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        "-c64",
        f"-d{max(1, int(DURATION if duration is None else duration))}s",
        "--latency",
    ]
    if workspaces:
        fd, name = tempfile.mkstemp(suffix=".lua")
        os.close(fd)
        script = Path(name)
        script.write_text(WRK_LUA % (",".join(f'"{w}"' for w in workspaces), path))
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps_match, out
    rps = float(rps_match.group(1))

    def lat(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk saw errors: {out}")
    return {"rps": rps, "p50": lat("50"), "p99": lat("99")}


def wrk_median(runs: int, *args: Any, **kw: Any) -> dict[str, float]:
    samples = [wrk(*args, **kw) for _ in range(runs)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


# --- data ------------------------------------------------------------------------------


async def seed_sessions(ctx: Ctx) -> list[str]:
    """10,000 sessions in 100 workspaces, by COPY."""
    conn = await asyncpg.connect(ctx.db_url)
    try:
        workspaces = [f"bench-ws-{i:03d}" for i in range(100)]
        await copy_workspaces(conn, workspaces, "Bench")
        now = dt.datetime.now(dt.UTC)
        records = []
        for i in range(10_000):
            w = workspaces[i % 100]
            seeded = closed_session(uuid.uuid4(), w, f"session {i}", f"/tmp/bench/{w}")
            records.append((*seeded, now - dt.timedelta(seconds=i)))
        await conn.copy_records_to_table(
            "sessions", records=records, columns=[*SESSION_COLUMNS, "created_at"]
        )
        await conn.execute("ANALYZE sessions")
        return workspaces
    finally:
        await conn.close()


# --- 1. warm list --------------------------------------------------------------------------


async def scenario_list(ctx: Ctx, query_port: int) -> None:
    workspaces = await seed_sessions(ctx)
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"http://127.0.0.1:{query_port}/api/sessions?workspaceId={workspaces[0]}&limit=50"
        ) as r:
            body = await r.read()
        for w in workspaces:  # warm every entry
            async with s.get(
                f"http://127.0.0.1:{query_port}/api/sessions?workspaceId={w}&limit=50"
            ) as r:
                assert r.status == 200
    body_path = ctx.tmp / "body.json"
    body_path.write_bytes(body)
    bare_port = free_port()
    bare = await start(
        ctx,
        ["-m", "tests.bench.bare", str(bare_port), str(body_path)],
        bare_port,
        "/bytes",
    )
    try:
        base = wrk_median(runs, f"http://127.0.0.1:{bare_port}/bytes")
        pg = wrk_median(
            runs, f"http://127.0.0.1:{bare_port}", workspaces, "/pg?workspaceId="
        )
        prod = wrk_median(
            runs,
            f"http://127.0.0.1:{query_port}",
            workspaces,
            "/api/sessions?workspaceId=",
        )
    finally:
        stop(ctx, bare)
    ctx.rows += [
        Row(
            "1 warm list req/s vs bare bytes",
            f"{base['rps']:,.0f}",
            f"{prod['rps']:,.0f}",
            f"{prod['rps'] / base['rps']:.0%}",
            ">= 60%",
            yes(prod["rps"] >= 0.6 * base["rps"]),
        ),
        Row(
            "1 warm list req/s vs uncached PG",
            f"{pg['rps']:,.0f}",
            f"{prod['rps']:,.0f}",
            f"{prod['rps'] / pg['rps']:.1f}x",
            ">= 5x",
            yes(prod["rps"] >= 5 * pg["rps"]),
        ),
        Row(
            "1 warm list p50 / p99 ms (bare)",
            f"{base['p50']:.2f} / {base['p99']:.2f}",
            f"{prod['p50']:.2f} / {prod['p99']:.2f}",
            "",
            "p99 <= 5",
            yes(prod["p99"] <= 5),
        ),
    ]
    ctx.notes.append(
        f"1: body {len(body):,} B; wrk -t1 -c64 -d{int(DURATION)}s, median of {runs}; product and PG pick one of "
        f"100 workspaces at random per request; uncached PG p50/p99 {pg['p50']:.2f}/{pg['p99']:.2f} ms"
    )


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


# --- helpers for the gateway ------------------------------------------------------------


async def rpc(
    s: aiohttp.ClientSession, port: int, method: str, params: dict[str, Any]
) -> Any:
    async with s.post(
        f"http://127.0.0.1:{port}/api/acp",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
    ) as r:
        data = await r.json()
    if "error" in data:
        raise RuntimeError(f"{method}: {data['error']}")
    return data["result"]


async def new_pace_session(s: aiohttp.ClientSession, gw: int, ws: str) -> str:
    res = await rpc(
        s,
        gw,
        "session/new",
        {
            "workspaceId": ws,
            "provider": "custom",
            "customCommand": PY,
            "customArgs": [str(HERE / "pace_agent.py")],
        },
    )
    sid = res["sessionId"]
    await wait_ready(s, gw, sid)
    return str(sid)


async def head_event_id(ctx: Ctx, sid: str) -> int:
    """The session's last stored eventId (a stream from it gets only what comes next)."""
    conn = await asyncpg.connect(ctx.db_url)
    try:
        head = await conn.fetchval(
            "SELECT last_event_id FROM sessions WHERE session_id = $1", uuid.UUID(sid)
        )
    finally:
        await conn.close()
    return int(head)


async def new_echo_session(
    s: aiohttp.ClientSession, gw: int, query: int
) -> tuple[float, float]:
    """One echo `session/new`, waited to `ready`, then deleted: (reply ms, ready ms)."""
    t0 = time.perf_counter()
    res = await rpc(
        s, gw, "session/new", {"workspaceId": "bench-ws-002", "provider": "echo"}
    )
    reply = (time.perf_counter() - t0) * 1000
    await wait_ready(s, gw, res["sessionId"])
    ready = (time.perf_counter() - t0) * 1000
    async with s.delete(
        f"http://127.0.0.1:{query}/api/sessions/{res['sessionId']}"
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"delete of {res['sessionId']} answered {r.status}")
    return reply, ready


async def wait_ready(s: aiohttp.ClientSession, gw: int, sid: str) -> None:
    async with (
        asyncio.timeout(30),
        s.get(f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}&replay=all") as r,
    ):
        async for line in r.content:
            if b'"acp_status"' in line and b'"ready"' in line:
                return
            if b'"acp_status"' in line and b'"error"' in line:
                raise RuntimeError(line.decode())


async def prompt(s: aiohttp.ClientSession, gw: int, sid: str, text: str) -> Any:
    return await rpc(
        s,
        gw,
        "session/prompt",
        {"sessionId": sid, "prompt": [{"type": "text", "text": text}]},
    )


class Clients:
    """sseclient.py processes on the client core."""

    def __init__(
        self, ctx: Ctx, url: str, total: int, procs: int, expected: int, deadline: float
    ) -> None:
        self.outs = [ctx.tmp / f"sse-{uuid.uuid4().hex[:6]}.txt" for _ in range(procs)]
        per = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        self.procs = [
            subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    CLIENT_CORE,
                    PY,
                    str(HERE / "sseclient.py"),
                    url,
                    str(n),
                    str(expected),
                    str(deadline),
                    str(out),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            for n, out in zip(per, self.outs, strict=True)
        ]

    async def ready(self) -> None:
        for p in self.procs:
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == b"ready", line

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()

    async def results(self) -> tuple[int, list[int]]:
        received, lat = 0, []
        for p, out in zip(self.procs, self.outs, strict=True):
            await asyncio.to_thread(p.wait)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
            lines = out.read_text().splitlines()
            received += int(lines[0].split()[1])
            lat += [int(x) for x in lines[1:] if x]
        return received, lat


# --- 2. event hop ---------------------------------------------------------------------------


async def scenario_hop(ctx: Ctx, gw: int) -> None:
    rate = 1000
    count = int(rate * DURATION)
    async with aiohttp.ClientSession() as s:
        sid = await new_pace_session(s, gw, "bench-ws-000")
        clients = Clients(
            ctx,
            f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}",
            1,
            1,
            count,
            DURATION + 30,
        )
        await clients.ready()
        clients.go()
        await prompt(s, gw, sid, f"pace {rate} {count}")
        received, lat = await clients.results()
        # throughput: a flood, timed from the prompt to the last event at the client
        flood = int(os.environ.get("BENCH_FLOOD", "50000"))
        # live from the current head: replaying the paced turn would count as flood
        head = await head_event_id(ctx, sid)
        clients = Clients(
            ctx,
            f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}&lastEventId={head}",
            1,
            1,
            flood,
            120,
        )
        await clients.ready()
        clients.go()
        t0 = time.monotonic()
        await prompt(s, gw, sid, f"flood {flood}")
        flood_received, _ = await clients.results()
        elapsed = time.monotonic() - t0
        conn = await asyncpg.connect(ctx.db_url)
        stored = await conn.fetchval(
            "SELECT count(*) FROM session_events WHERE session_id = $1", uuid.UUID(sid)
        )
        await conn.close()
    prod_rate = flood_received / elapsed
    rp50, rp99, redis_rate = await redis_baseline(ctx, rate, count)
    copy_rate = await copy_baseline(ctx)
    p50, p99 = pct(lat, 50) / 1000, pct(lat, 99) / 1000
    ctx.rows += [
        Row(
            "2 hop p50 ms @1k ev/s (raw pub/sub)",
            f"{rp50:.2f}",
            f"{p50:.2f}",
            f"{p50 / rp50:.1f}x",
            "<= 2",
            yes(p50 <= 2),
        ),
        Row(
            "2 hop p99 ms @1k ev/s (raw pub/sub)",
            f"{rp99:.2f}",
            f"{p99:.2f}",
            f"{p99 / rp99:.1f}x",
            "<= 10",
            yes(p99 <= 10),
        ),
        Row(
            "2 events/s stored+published (COPY 50s)",
            f"{copy_rate:,.0f}",
            f"{prod_rate:,.0f}",
            f"{prod_rate / copy_rate:.0%}",
            ">= 20,000",
            yes(prod_rate >= 20_000),
        ),
        Row(
            "2 raw pub/sub pipelined msg/s (info)", f"{redis_rate:,.0f}", "", "", "", ""
        ),
    ]
    ctx.notes.append(
        f"2: paced {received}/{count} delivered; flood {flood_received}/{flood} delivered in {elapsed:.2f}s "
        f"(includes the agent's own emit), {stored} rows stored for the session"
    )


async def redis_baseline(ctx: Ctx, rate: int, count: int) -> tuple[float, float, float]:
    """Raw pub/sub: paced publish → subscriber (another task, same client core) latency, and
    flat-out pipelined throughput seen by the subscriber."""
    pub = aioredis.from_url(ctx.redis_url)
    sub = aioredis.from_url(ctx.redis_url)
    chan = f"{ctx.prefix}:bench:raw"
    ps = sub.pubsub()
    await ps.subscribe(chan)
    await ps.get_message(timeout=1)
    lat: list[int] = []
    done = asyncio.Event()
    expected = [count]

    async def reader() -> None:
        got = 0
        async for msg in ps.listen():
            if msg["type"] != "message":
                continue
            now = time.monotonic_ns()
            lat.append((now - int(orjson.loads(msg["data"])["ts"])) // 1000)
            got += 1
            if got >= expected[0]:
                done.set()
                got = 0

    task = asyncio.create_task(reader())
    start_ns = time.monotonic_ns() + 5_000_000
    pad = "x" * 150
    for i in range(count):
        due = start_ns + int(i * 1e9 / rate)
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        await pub.publish(chan, orjson.dumps({"ts": due, "pad": pad}))
    async with asyncio.timeout(30):
        await done.wait()
    p50, p99 = pct(lat, 50) / 1000, pct(lat, 99) / 1000
    done.clear()
    n = 50_000
    expected[0] = n
    t0 = time.monotonic()
    for _ in range(0, n, 50):
        async with pub.pipeline(transaction=False) as pipe:
            for _ in range(50):
                pipe.publish(
                    chan, orjson.dumps({"ts": time.monotonic_ns(), "pad": pad})
                )
            await pipe.execute()
    async with asyncio.timeout(60):
        await done.wait()
    thr = n / (time.monotonic() - t0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ps.aclose()
    await pub.aclose()
    await sub.aclose()
    return p50, p99, thr


async def copy_baseline(ctx: Ctx) -> float:
    conn = await asyncpg.connect(ctx.db_url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_events (session_id text, message_index int, event_type text,"
            " payload jsonb, created_at timestamptz DEFAULT now(), UNIQUE (session_id, message_index))"
        )
        payload = orjson.dumps(
            {
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": "x" * 120},
            }
        ).decode()
        n, sid = 0, "s"
        t0 = time.monotonic()
        while time.monotonic() - t0 < min(5.0, DURATION):
            recs = [(sid, n + i, "agent_message_chunk", payload) for i in range(50)]
            await conn.copy_records_to_table(
                "bench_events",
                records=recs,
                columns=["session_id", "message_index", "event_type", "payload"],
            )
            n += 50
        return n / (time.monotonic() - t0)
    finally:
        await conn.close()


# --- 3. fan-out ----------------------------------------------------------------------------


async def scenario_fanout(ctx: Ctx, gw_proc: subprocess.Popen[bytes], gw: int) -> None:
    shapes = [(1000, 50), (2500, 20)]
    dur = DURATION
    for subs, rate in shapes:
        count = int(rate * dur)
        expected_deliveries = subs * count
        # bare
        bare_port = free_port()
        bare = await start(
            ctx,
            ["-m", "tests.bench.bare", str(bare_port), "/dev/null"],
            bare_port,
            "/bytes",
        )
        try:
            rss0 = rss_kib(bare.pid)
            clients = Clients(
                ctx, f"http://127.0.0.1:{bare_port}/events", subs, 2, count, dur + 20
            )
            await clients.ready()
            bare_per = (rss_kib(bare.pid) - rss0) / subs
            clients.go()
            t0 = time.monotonic()
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    f"http://127.0.0.1:{bare_port}/produce?rate={rate}&count={count}"
                ) as r,
            ):
                await r.read()
            b_recv, b_lat = await clients.results()
            b_rate = b_recv / (time.monotonic() - t0)
        finally:
            stop(ctx, bare)
        # product
        async with aiohttp.ClientSession() as s:
            sid = await new_pace_session(s, gw, "bench-ws-001")
            rss0 = rss_kib(gw_proc.pid)
            clients = Clients(
                ctx,
                f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}",
                subs,
                2,
                count,
                dur + 20,
            )
            await clients.ready()
            per = (rss_kib(gw_proc.pid) - rss0) / subs
            clients.go()
            t0 = time.monotonic()
            await prompt(s, gw, sid, f"pace {rate} {count}")
            p_recv, p_lat = await clients.results()
            p_rate = p_recv / (time.monotonic() - t0)
            with contextlib.suppress(Exception):
                await rpc(s, gw, "session/cancel", {"sessionId": sid})
        # deliveries/s over the paced window (dur) so both sides are comparable
        b_dps, p_dps = b_recv / dur, p_recv / dur
        frac = p_recv / expected_deliveries
        p99 = pct(p_lat, 99) / 1000
        ctx.rows += [
            Row(
                f"3 fan-out {subs}x{rate}/s deliveries/s",
                f"{b_dps:,.0f}",
                f"{p_dps:,.0f}",
                f"{p_dps / b_dps:.0%}",
                ">= 80%",
                yes(p_dps >= 0.8 * b_dps),
            ),
            Row(
                f"3 fan-out {subs}x{rate}/s delivered",
                f"{b_recv / expected_deliveries:.1%}",
                f"{frac:.1%}",
                "",
                "100%",
                yes(frac >= 1.0),
            ),
            Row(
                f"3 fan-out {subs}x{rate}/s p50/p99 ms",
                f"{pct(b_lat, 50) / 1000:.1f} / {pct(b_lat, 99) / 1000:.1f}",
                f"{pct(p_lat, 50) / 1000:.1f} / {p99:.1f}",
                "",
                "p99 <= 50",
                yes(p99 <= 50),
            ),
            Row(
                f"3 fan-out {subs} KiB/subscriber",
                f"{bare_per:.1f}",
                f"{per:.1f}",
                "",
                "<= 20",
                yes(per <= 20),
            ),
        ]
        ctx.notes.append(
            f"3: {subs}x{rate}/s wall rates bare {b_rate:,.0f}/s product {p_rate:,.0f}/s over the whole run"
        )


# --- 4. session/new ---------------------------------------------------------------------------


async def scenario_new(ctx: Ctx, gw: int, query: int) -> None:
    replies, readies = [], []
    async with aiohttp.ClientSession() as s:
        await rpc(s, gw, "initialize", {})
        for _ in range(int(os.environ.get("BENCH_NEW", "40"))):
            reply, ready = await new_echo_session(s, gw, query)
            replies.append(reply)
            readies.append(ready)
    p50 = statistics.median(replies)
    ctx.rows += [
        Row("4 session/new reply p50 ms", "", f"{p50:.2f}", "", "<= 5", yes(p50 <= 5)),
        Row(
            "4 session/new reply p99 / to ready p50 ms",
            "",
            f"{pct(replies, 99):.2f} / {statistics.median(readies):.1f}",
            "",
            "",
            "",
        ),
    ]


# --- 5. soak -------------------------------------------------------------------------------


async def scenario_soak(
    ctx: Ctx, procs: dict[str, subprocess.Popen[bytes]], gw: int, query: int
) -> None:
    stop_at = time.monotonic() + SOAK
    counts = {"created": 0, "prompted": 0, "streamed": 0, "listed": 0}

    async def worker(n: int) -> None:
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < stop_at:
                ws = f"bench-ws-{random.randrange(100):03d}"
                res = await rpc(
                    s, gw, "session/new", {"workspaceId": ws, "provider": "echo"}
                )
                sid = res["sessionId"]
                counts["created"] += 1
                await wait_ready(s, gw, sid)
                for _ in range(3):
                    await prompt(s, gw, sid, "hello soak")
                    counts["prompted"] += 1
                    async with s.get(
                        f"http://127.0.0.1:{gw}/api/acp?sessionId={sid}&replay=all"
                    ) as r:
                        await r.content.readuntil(b"Connected to ACP session.")
                    counts["streamed"] += 1
                    for _ in range(20):
                        async with s.get(
                            f"http://127.0.0.1:{query}/api/sessions?workspaceId={ws}&limit=50"
                        ) as r:
                            await r.read()
                        counts["listed"] += 1
                async with s.delete(
                    f"http://127.0.0.1:{query}/api/sessions/{sid}"
                ) as r:
                    assert r.status == 200

    def snap() -> dict[str, tuple[int, int]]:
        return {k: (rss_kib(p.pid), nfds(p.pid)) for k, p in procs.items()}

    # a short warm-up so the start figures are steady-state, then the soak
    global_stop = stop_at
    stop_at = time.monotonic() + min(30.0, SOAK / 10)
    await asyncio.gather(*(worker(i) for i in range(4)))
    begin = snap()
    stop_at = time.monotonic() + SOAK
    await asyncio.gather(*(worker(i) for i in range(4)))
    del global_stop
    end = snap()
    for name in procs:
        (r0, f0), (r1, f1) = begin[name], end[name]
        growth = (r1 - r0) / r0
        ctx.rows.append(
            Row(
                f"5 soak {name} RSS MiB / fds",
                f"{r0 / 1024:.1f} / {f0}",
                f"{r1 / 1024:.1f} / {f1}",
                f"{growth:+.1%}",
                "RSS <= +10%",
                yes(growth <= 0.10),
            )
        )
    ctx.notes.append(
        f"5: soak {SOAK:.0f}s, 4 workers: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )


# --- 6. the event log at scale ------------------------------------------------------------


async def scenario_eventlog(ctx: Ctx) -> None:
    """BENCH_EVENTS events (default 1M) in a database of their own: tests/bench/eventlog_scale."""
    from tests.bench import eventlog_scale

    events = eventlog_scale.parse_size(os.environ.get("BENCH_EVENTS", "1M"))
    result = await eventlog_scale.eventlog_run(events, max(10, events // 100))
    ctx.rows += eventlog_scale.rows_of(result)
    ctx.notes.append(
        f"6: {events:,} events loaded by COPY at {result['load']['events_per_s']:,.0f}/s; "
        f"{result['disk']['bytes_per_event']:.0f} B on disk per event"
    )


# --- the run -------------------------------------------------------------------------------


def table(ctx: Ctx) -> str:
    head = ("scenario", "baseline", "product", "ratio", "target", "met?")
    rows = [head] + [
        (r.scenario, r.baseline, r.product, r.ratio, r.target, r.met) for r in ctx.rows
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = io.StringIO()
    for i, r in enumerate(rows):
        out.write(
            "| "
            + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
            + " |\n"
        )
        if i == 0:
            out.write("|" + "|".join("-" * (w + 2) for w in widths) + "|\n")
    return out.getvalue()


def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} vCPU, {model}, Python {platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"


def progress(line: str) -> None:
    """One line on stderr per step: the table goes to stdout at the end."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


async def run(only: set[str] | None = None) -> Ctx:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    db = Database(kind="bench")
    ctx = Ctx(
        db.url,
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        f"bench-{db.run_id}",
        Path(tempfile.mkdtemp(prefix="routa-bench-")),
    )
    progress(f"database {db.name}: creating and migrating")
    await db.create()
    want = sorted(only or {"1", "2", "3", "4", "5", "6"})
    if SOAK <= 0:
        want = [n for n in want if n != "5"]
    try:
        qport, gport = free_port(), free_port()
        progress(f"starting a query service (:{qport}) and a gateway (:{gport})")
        query = await start(ctx, ["-m", "services.query"], qport, "/healthz")
        gateway = await start(ctx, ["-m", "services.gateway"], gport, "/healthz")
        if "1" not in want:
            progress("seeding 10,000 sessions")
            await seed_sessions(ctx)
        # in this order: the list runs first (it seeds), the soak last
        scenarios = {
            "1": (
                "warm session list (wrk, 3 runs of BENCH_DURATION each side)",
                lambda: scenario_list(ctx, qport),
            ),
            "4": (
                "session/new reply and time to ready",
                lambda: scenario_new(ctx, gport, qport),
            ),
            "2": (
                "event hop agent → SSE, and the store+publish rate",
                lambda: scenario_hop(ctx, gport),
            ),
            "3": (
                "fan-out to 1,000 and 2,500 streams",
                lambda: scenario_fanout(ctx, gateway, gport),
            ),
            "6": (
                "the event log at BENCH_EVENTS events (own database)",
                lambda: scenario_eventlog(ctx),
            ),
            "5": (
                f"soak for {SOAK:g}s",
                lambda: scenario_soak(
                    ctx, {"gateway": gateway, "query": query}, gport, qport
                ),
            ),
        }
        chosen = [n for n in scenarios if n in want]
        for i, number in enumerate(chosen, 1):
            title, scenario = scenarios[number]
            progress(f"scenario {number} ({i}/{len(chosen)}): {title}")
            began = time.monotonic()
            await scenario()
            progress(f"scenario {number} done in {time.monotonic() - began:.0f}s")
    finally:
        for p in list(ctx.procs):
            stop(ctx, p)
        await db.drop()
        with contextlib.suppress(Exception):
            r = create_redis(ctx.redis_url)
            keys = await prefixed_keys(r, f"{Channels(ctx.prefix).base}:*")
            if keys:
                await r.delete(*keys)
            await r.aclose()
    return ctx


async def prefixed_keys(r: Redis, match: str) -> list[bytes]:
    """The keys matching `match`; on a Redis Cluster those of every master."""
    if isinstance(r, RedisCluster):
        return [k async for k in r.scan_iter(match, target_nodes=r.PRIMARIES)]
    return [k async for k in r.scan_iter(match)]


def main() -> None:
    if sys.argv[1:2] == ["--curves"]:
        from tests.bench import curves

        curves.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--ab"]:
        from tests.bench import ab

        ab.main(sys.argv[2:])
        return
    only = (
        set(os.environ["BENCH_ONLY"].split(","))
        if os.environ.get("BENCH_ONLY")
        else None
    )
    import uvloop

    ctx = uvloop.run(run(only))
    print(f"\nRouta session layer benchmarks — {machine()}")
    print(f"BENCH_DURATION={DURATION:g}s BENCH_SOAK={SOAK:g}s\n")
    print(table(ctx))
    for note in ctx.notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
