# ruff: noqa: T201
"""Paired A/B of this checkout against another commit (`scripts/bench --ab REV [ROUNDS]`).

On a shared machine the same-run baselines move by 2-3x within minutes, so two suite runs
one after the other cannot tell a 10% change apart. Here both versions run side by side
(each its own database, query service and gateway, all on core 0; clients on core 1) and
take turns in short rounds (A B, then B A, ...), so both see the same noise; the result is
the median of the per-round ratios and how many rounds each side won:

- the warm session list (wrk for BENCH_AB_LIST seconds, default 5, 10,000 sessions in 100
  workspaces, a random one per request): req/s and p99;
- the event hop at 1,000 events/s (BENCH_AB_EVENTS per round, default 3,000): p50 and p99;
- `session/new`'s reply (BENCH_AB_NEW calls per round, default 10, each waited to `ready`
  and deleted): the round's median, and p50 / p99 over all calls;
- gateway RSS per SSE subscriber (1,000 streams on one session, a fresh gateway per side
  and round, so allocator reuse does not flatter the later rounds).

BENCH_AB_ONLY (comma-separated of hop, new, list, memory; default all) runs some rows only:
`BENCH_AB_ONLY=list` compares the query services alone, with no gateway beside them.

REV is checked out with `git worktree` into a temporary directory (removed afterwards) and
migrated with its own migrations. Figures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from tests.bench import suite

SUBSCRIBERS = 1000
ROWS = ("hop", "new", "list", "memory")


def rows_to_run(value: str) -> frozenset[str]:
    """BENCH_AB_ONLY's rows; all of them when unset or empty."""
    rows = frozenset(r.strip() for r in value.split(",") if r.strip()) or frozenset(
        ROWS
    )
    unknown = rows - set(ROWS)
    if unknown:
        raise SystemExit(f"BENCH_AB_ONLY: unknown rows {sorted(unknown)}; known {ROWS}")
    return rows


@dataclass
class Side:
    """One version under test: its checkout, services and figures."""

    label: str
    root: Path
    ctx: suite.Ctx
    database: str
    gateway: int = 0
    query: int = 0
    session: str = ""
    figures: dict[str, list[float]] = field(default_factory=dict)
    replies: list[float] = field(default_factory=list)  # every session/new, ms

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(value)

    async def start(self, module: str) -> tuple[int, subprocess.Popen[bytes]]:
        port = suite.free_port()
        proc = await suite.start(
            self.ctx, ["-m", module], port, "/healthz", root=self.root
        )
        return port, proc


async def make_side(label: str, root: Path) -> Side:
    """A database migrated by `root`'s own code, with the bench workspaces."""
    run_id = uuid.uuid4().hex[:8]
    db = suite.Database(kind=f"ab{label.lower()}")
    ctx = suite.Ctx(
        db.url,
        os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        f"bench-ab{label.lower()}-{run_id}",
        Path(tempfile.mkdtemp(prefix=f"routa-ab{label.lower()}-")),
    )
    migrate = "import asyncio, sys; from shared.db.migrate import migrate; asyncio.run(migrate(sys.argv[1]))"
    subprocess.run(
        [suite.PY, "-c", migrate, db.url],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    await suite.seed_sessions(ctx)  # columns every version has
    return Side(label, root, ctx, db.name)


async def warm_list(side: Side, s: aiohttp.ClientSession) -> None:
    """Every workspace's first page once, so the rounds measure the warm list."""
    for i in range(100):
        url = f"http://127.0.0.1:{side.query}/api/sessions?workspaceId=bench-ws-{i:03d}&limit=50"
        async with s.get(url) as r:
            if r.status != 200:
                raise RuntimeError(f"{side.label}: list answered {r.status}")


def list_load(side: Side, seconds: float) -> dict[str, float]:
    """wrk on the warm list, a random one of the 100 workspaces per request."""
    workspaces = [f"bench-ws-{i:03d}" for i in range(100)]
    return suite.wrk(
        f"http://127.0.0.1:{side.query}",
        workspaces,
        "/api/sessions?workspaceId=",
        duration=seconds,
    )


async def hop(side: Side, s: aiohttp.ClientSession, events: int) -> list[int]:
    """One paced turn at 1,000 events/s; the hop of each event in µs."""
    head = await suite.head_event_id(side.ctx, side.session)
    url = f"http://127.0.0.1:{side.gateway}/api/acp?sessionId={side.session}&lastEventId={head}"
    clients = suite.Clients(side.ctx, url, 1, 1, events, 60)
    await clients.ready()
    clients.go()
    await suite.prompt(s, side.gateway, side.session, f"pace 1000 {events}")
    received, lat = await clients.results()
    if received != events:
        raise RuntimeError(f"{side.label}: {received} of {events} events delivered")
    return lat


async def new_sessions(side: Side, s: aiohttp.ClientSession, count: int) -> list[float]:
    """`count` session/new replies in ms (each waited to ready, then deleted)."""
    return [
        (await suite.new_echo_session(s, side.gateway, side.query))[0]
        for _ in range(count)
    ]


async def rss_per_subscriber(side: Side) -> float:
    """KiB of a fresh gateway's RSS per stream, 1,000 streams open on one session."""
    port, proc = await side.start("services.gateway")
    try:
        async with aiohttp.ClientSession() as s:
            sid = await suite.new_pace_session(s, port, "bench-ws-001")
            await asyncio.sleep(1)
            before = suite.rss_kib(proc.pid)
            url = f"http://127.0.0.1:{port}/api/acp?sessionId={sid}"
            clients = suite.Clients(side.ctx, url, SUBSCRIBERS, 2, 1, 30)
            await clients.ready()
            per = (suite.rss_kib(proc.pid) - before) / SUBSCRIBERS
            clients.go()
            await suite.prompt(s, port, sid, "pace 100 1")
            received, _ = await clients.results()
            if received != SUBSCRIBERS:
                raise RuntimeError(f"{side.label}: {received} of {SUBSCRIBERS} streams")
            return per
    finally:
        suite.stop(side.ctx, proc)


async def rounds(
    sides: list[Side], count: int, step: Callable[[Side], Awaitable[None]]
) -> None:
    """`count` rounds, each side once per round, the order alternating."""
    for i in range(count):
        for side in sides if i % 2 == 0 else sides[::-1]:
            await step(side)
        suite.progress(f"round {i + 1}/{count}")


def paired(a: list[float], b: list[float]) -> tuple[float, int]:
    """Median of B/A over the rounds, and in how many rounds B was lower."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), sum(r < 1 for r in ratios)


async def run(rev: str, count: int) -> None:
    os.sched_setaffinity(0, {int(suite.CLIENT_CORE)})
    events = int(os.environ.get("BENCH_AB_EVENTS", "3000"))
    news = int(os.environ.get("BENCH_AB_NEW", "10"))
    list_seconds = float(os.environ.get("BENCH_AB_LIST", "5"))
    only = rows_to_run(os.environ.get("BENCH_AB_ONLY", ""))
    gateway = bool(only & {"hop", "new"})
    worktree = Path(tempfile.mkdtemp(prefix="routa-ab-rev-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(worktree), rev],
        cwd=suite.ROOT,
        check=True,
        capture_output=True,
    )
    sides: list[Side] = []
    try:
        sides = [await make_side("A", worktree), await make_side("B", suite.ROOT)]
        for side in sides:
            side.query, _ = await side.start("services.query")
            if gateway:
                side.gateway, _ = await side.start("services.gateway")
        async with aiohttp.ClientSession() as s:
            for side in sides:
                if gateway:
                    side.session = await suite.new_pace_session(
                        s, side.gateway, "bench-ws-000"
                    )
                    await hop(side, s, 500)  # warm-up
                    await new_sessions(side, s, 3)
                await warm_list(side, s)

            async def both(side: Side) -> None:
                if "hop" in only:
                    lat = await hop(side, s, events)
                    side.add("hop p50 ms", suite.pct(lat, 50) / 1000)
                    side.add("hop p99 ms", suite.pct(lat, 99) / 1000)
                if "new" in only:
                    replies = await new_sessions(side, s, news)
                    side.add("session/new median ms", statistics.median(replies))
                    side.replies.extend(replies)
                if "list" in only:
                    await warm_list(side, s)  # session/new and delete dropped some
                    listed = await asyncio.to_thread(list_load, side, list_seconds)
                    side.add("warm list req/s", listed["rps"])
                    side.add("warm list p99 ms", listed["p99"])

            if only - {"memory"}:
                suite.progress(
                    f"{', '.join(sorted(only - {'memory'}))}: {count} rounds"
                )
                await rounds(sides, count, both)
        for side in sides:  # idle while the memory rounds run
            for proc in list(side.ctx.procs):
                suite.stop(side.ctx, proc)

        async def memory(side: Side) -> None:
            side.add("KiB per subscriber", await rss_per_subscriber(side))

        if "memory" in only:
            memory_rounds = max(2, count // 2)
            suite.progress(f"memory per subscriber: {memory_rounds} rounds")
            await rounds(sides, memory_rounds, memory)
    finally:
        for side in sides:
            for proc in list(side.ctx.procs):
                suite.stop(side.ctx, proc)
            with contextlib.suppress(Exception):
                admin = await asyncpg.connect(suite.Database().server)
                await admin.execute(
                    f'DROP DATABASE IF EXISTS "{side.database}" WITH (FORCE)'
                )
                await admin.close()
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(worktree)],
            cwd=suite.ROOT,
            check=False,
            capture_output=True,
        )
    a, b = sides
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=suite.ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"\nPaired A/B — A: {rev}, B: this checkout ({head}) — {suite.machine()}")
    print(
        f"{count} rounds; hop {events} events/round at 1,000/s; {news} session/new per "
        "round; lower is better except req/s\n"
    )
    print("| figure | A median | B median | B/A (median of rounds) | rounds B lower |")
    print("|---|---|---|---|---|")
    for name, values in a.figures.items():
        ratio, wins = paired(values, b.figures[name])
        print(
            f"| {name} | {statistics.median(values):.2f} | "
            f"{statistics.median(b.figures[name]):.2f} | {ratio:.3f} | {wins}/{len(values)} |"
        )
    for p in (50, 99) if a.replies else ():
        print(
            f"| session/new p{p} ms, all calls | {suite.pct(a.replies, p):.2f} | "
            f"{suite.pct(b.replies, p):.2f} | | |"
        )


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: scripts/bench --ab REV [ROUNDS]")
    import uvloop

    uvloop.run(run(argv[0], int(argv[1]) if len(argv) > 1 else 20))


if __name__ == "__main__":
    main(sys.argv[1:])
