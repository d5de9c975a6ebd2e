"""Load a database with N sessions and M events by COPY, in the layout the gateway stores.

Each event row is what `shared.db.session_events.append_batch` writes: payload =
`{"sessionId":"<id>","eventId":"` + id + `",` + the rest of the params, byte for byte. The
events come in turns (a prompt, thoughts, a tool call and its update, agent message chunks
with a messageId, a usage report, turn_complete with usage), so the usage trigger and a
search index pass see the same mix of kinds as a live gateway gives them. The load runs no
index pass: search documents of loaded sessions are built by their first pass.

One session (`long_id`) holds `long_events` events for the paging and replay probes; the
rest are spread over the other sessions. Sessions are COPYed in uuid order, so each session's
rows land at the right edge of the primary key while loading (a live log interleaves
sessions, so its index pages are less full: see docs/benchmarks.md).

`triggers=False` disables the user triggers of both tables for the load (usage sums are
then not built) and enables them again afterwards; the timing of both
is what docs/benchmarks.md compares.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import asyncpg
import orjson

BATCH = 20_000  # rows per COPY statement
WORKSPACES = 100

_TEXT = (
    "the session layer stores every update in order and streams it to each subscriber"
    " while the agent reads files runs tests and explains what changed"
)
_WORDS = tuple(_TEXT.split())


# A seeded session is a closed echo session: these columns first, the caller's after.
SESSION_COLUMNS = (
    "session_id",
    "workspace_id",
    "name",
    "cwd",
    "provider",
    "role",
    "acp_status",
    "status",
)


def closed_session(
    session_id: uuid.UUID, workspace: str, name: str, cwd: str
) -> tuple[object, ...]:
    """The SESSION_COLUMNS values of one seeded session."""
    return (session_id, workspace, name, cwd, "echo", "CRAFTER", "closed", "closed")


async def copy_workspaces(conn: asyncpg.Connection, ids: list[str], title: str) -> None:
    """The workspaces `ids`, each titled `title` and its id."""
    await conn.copy_records_to_table(
        "workspaces",
        records=[(w, f"{title} {w}") for w in ids],
        columns=["id", "title"],
    )


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _rest(params: Mapping[str, object]) -> str:
    """The payload after the eventId value, as append_batch builds it."""
    body = orjson.dumps(params)
    return '",' + body[1:].decode()


def turn_template(rng: random.Random, turn: int) -> list[tuple[str, str]]:
    """(kind, rest) of one turn's 26 events."""
    tool = f"call_{turn}_{rng.randrange(1 << 30):x}"
    msg = f"msg_{turn}_{rng.randrange(1 << 30):x}"
    out: list[tuple[str, str]] = []

    def add(update_kind: str, **fields: object) -> None:
        params = {"update": {"sessionUpdate": update_kind, **fields}}
        out.append((update_kind, _rest(params)))

    add("user_message", content={"type": "text", "text": _text(rng, 20)})
    for _ in range(3):
        add("agent_thought_chunk", content={"type": "text", "text": _text(rng, 8)})
    add(
        "tool_call",
        toolCallId=tool,
        title="Read src/app.py",
        kind="read",
        status="pending",
        locations=[{"path": "/work/project/src/app.py"}],
    )
    add(
        "tool_call_update",
        toolCallId=tool,
        status="completed",
        content=[
            {"type": "content", "content": {"type": "text", "text": _text(rng, 50)}}
        ],
    )
    for _ in range(18):
        add(
            "agent_message_chunk",
            messageId=msg,
            content={"type": "text", "text": _text(rng, 7) + " "},
        )
    add("usage_update", used=rng.randrange(1000, 100_000), size=200_000)
    add(
        "turn_complete",
        stopReason="end_turn",
        usage={
            "inputTokens": rng.randrange(100, 5000),
            "outputTokens": rng.randrange(50, 900),
        },
    )
    return out


@dataclass
class Loaded:
    sessions: int
    events: int
    workspaces: list[str]
    long_id: uuid.UUID
    long_events: int
    triggers: bool
    seconds_sessions: float = 0.0
    seconds_events: float = 0.0
    # (session id, its event count) of a sample of ordinary sessions, for probes
    sample: list[tuple[uuid.UUID, int]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds_events if self.seconds_events else 0.0


def _counts(
    sessions: int, events: int, long_events: int, rng: random.Random
) -> list[int]:
    """Events per session: the long one first, the rest spread around the mean (±50%)."""
    rest = max(0, events - long_events)
    others = sessions - 1
    counts = [long_events]
    if others <= 0:
        return counts
    mean = rest / others
    raw = [mean * (0.5 + rng.random()) for _ in range(others)]
    scale = rest / sum(raw) if sum(raw) else 0.0
    ints = [int(r * scale) for r in raw]
    short = rest - sum(ints)
    for i in range(short):
        ints[i % others] += 1
    return counts + ints


async def load(
    db_url: str,
    sessions: int,
    events: int,
    *,
    long_events: int = 100_000,
    triggers: bool = True,
    seed: int = 16,
    concurrency: int = 2,
    progress: bool = False,
) -> Loaded:
    """COPY `sessions` sessions and `events` events into a migrated, empty database."""
    rng = random.Random(seed)
    long_events = min(long_events, events)
    ids = sorted(
        uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(sessions)
    )
    long_id = ids[rng.randrange(len(ids))]
    counts = _counts(sessions, events, long_events, rng)
    # the long session's count goes to long_id; the others keep uuid order
    order = [long_id] + [i for i in ids if i != long_id]
    per_session = dict(zip(order, counts, strict=True))
    workspaces = [f"scale-ws-{i:03d}" for i in range(min(WORKSPACES, max(1, sessions)))]
    templates = [turn_template(rng, t) for t in range(64)]
    loaded = Loaded(sessions, events, workspaces, long_id, long_events, triggers)

    conn = await asyncpg.connect(db_url)
    try:
        if not triggers:
            await conn.execute("ALTER TABLE sessions DISABLE TRIGGER USER")
            await conn.execute("ALTER TABLE session_events DISABLE TRIGGER USER")
        await copy_workspaces(conn, workspaces, "Scale")
        now = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        for start in range(0, sessions, BATCH):
            recs = []
            for i, sid in enumerate(ids[start : start + BATCH], start):
                at = now - dt.timedelta(seconds=sessions - i)
                seeded = closed_session(
                    sid,
                    workspaces[i % len(workspaces)],
                    f"session {i}",
                    "/work/project",
                )
                recs.append((*seeded, per_session[sid], at, at, at))
            await conn.copy_records_to_table(
                "sessions",
                records=recs,
                columns=[
                    *SESSION_COLUMNS,
                    "last_event_id",
                    "created_at",
                    "last_activity",
                    "updated_at",
                ],
            )
        loaded.seconds_sessions = time.monotonic() - t0
    finally:
        await conn.close()

    def batches() -> Iterator[list[tuple[uuid.UUID, int, str, str]]]:
        batch: list[tuple[uuid.UUID, int, str, str]] = []
        for n, sid in enumerate(ids):
            head = f'{{"sessionId":"{sid}","eventId":"'
            tmpl = templates[n % len(templates)]
            width = len(tmpl)
            for eid in range(1, per_session[sid] + 1):
                kind, rest = tmpl[(eid - 1) % width]
                batch.append((sid, eid, kind, f"{head}{eid}{rest}"))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    t0 = time.monotonic()
    queue: asyncio.Queue[list[tuple[uuid.UUID, int, str, str]] | None] = asyncio.Queue(
        concurrency
    )
    done = [0]

    async def writer() -> None:
        c = await asyncpg.connect(db_url)
        try:
            if not triggers:
                # every trigger, the foreign key's too: the generator writes consistent rows
                await c.execute("SET session_replication_role = replica")
            while (recs := await queue.get()) is not None:
                await c.copy_records_to_table(
                    "session_events",
                    records=recs,
                    columns=["session_id", "event_id", "kind", "payload"],
                )
                done[0] += len(recs)
        finally:
            await c.close()

    tasks = [asyncio.create_task(writer()) for _ in range(concurrency)]
    last_report = t0
    try:
        for batch in batches():
            await queue.put(batch)
            if progress and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                rate = done[0] / (last_report - t0)
                print(  # noqa: T201
                    f"eventlog: {done[0]:,} / {events:,} events, {rate:,.0f}/s",
                    flush=True,
                )
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    loaded.seconds_events = time.monotonic() - t0

    conn = await asyncpg.connect(db_url)
    try:
        if not triggers:
            await conn.execute("ALTER TABLE sessions ENABLE TRIGGER USER")
            await conn.execute("ALTER TABLE session_events ENABLE TRIGGER USER")
        await conn.execute("ANALYZE sessions")
        await conn.execute("ANALYZE session_events")
    finally:
        await conn.close()
    loaded.sample = [
        (sid, per_session[sid])
        for sid in rng.sample(order[1:], min(200, len(order) - 1))
    ]
    return loaded
