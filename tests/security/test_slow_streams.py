"""Event-stream clients that never read (issue 12 item 4).

They must not lock a session out (caps per session and per client; open streams are never
closed for new ones), and what they leave unsent is bounded: a stream over its byte budget
or with bytes unreceived for too long is closed (its client replays with Last-Event-ID),
and a process-wide budget closes the largest backlogs first. The RSS test runs a real
gateway process: never-reading clients are raw sockets with a small SO_RCVBUF that send the
request and never call recv, while an `/flood` runs and a fast subscriber reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.common.hub import Hub, StreamConfig, Subscriber
from services.common.keys import HUB, STREAM_CONFIG
from services.gateway.app import create_app
from services.gateway.fanout import encode_event
from shared.channels import Channels
from shared.events import record
from tests.conftest import RUN_ID
from tests.gateway.conftest import SseReader, chunk
from tests.scaleout.support import Proc, free_port, start_service, stop, wait_ready
from tests.security.conftest import TOKEN_A, TOKEN_ALL, bearer, insert_session

ROOT = Path(__file__).resolve().parents[2]
WAIT = 120.0  # hang guard only
MIB = 1024 * 1024


# -- helpers -------------------------------------------------------------------------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A size line of /proc/<pid>/status in KiB (VmHWM: the peak of VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None, field
    return int(match.group(1))


async def never_readers(
    port: int, session_id: str, count: int, headers: str = ""
) -> list[socket.socket]:
    """`count` connections that send the stream request and never read a byte."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /api/acp?sessionId={session_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n{headers}\r\n"
    ).encode()
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # before connect, so the window the server sees is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        socks.append(sock)
    return socks


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Polls a condition; the timeout is a hang guard, not a measurement."""
    try:
        async with asyncio.timeout(30):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Reader:
    """Reads one stream as it comes (a task); records eventIds and update kinds."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.reader = SseReader(resp)
        self.ids: list[int] = []
        self.kinds: list[str] = []
        self.ended = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (frame := await self.reader.frame()) is not None:
            if frame.is_event:
                self.ids.append(int(frame.id or 0))
                self.kinds.append(frame.data["params"]["update"]["sessionUpdate"])
        self.ended = True

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self.task
        self.reader.resp.close()


@pytest.fixture
def make_gw(make_settings, aiohttp_client, cwd_root):
    """A gateway app on a test client; backlogs are checked every 0.05 s."""

    async def _make(**overrides: Any):
        app = create_app(make_settings(**overrides))
        app[STREAM_CONFIG] = StreamConfig(check_interval=0.05)
        client = await aiohttp_client(app)
        async with asyncio.timeout(10):
            await app[HUB].connected.wait()
        return client

    return _make


@pytest.fixture
def append(pool, redis, channels) -> Callable[..., Any]:
    async def _append(session_id: str, *updates: dict[str, Any]) -> list[int]:
        stored = await record(
            pool, uuid.UUID(session_id), list(updates), redis=redis, channels=channels
        )
        return [e.event_id for e in stored]

    return _append


def stream_url(session_id: str) -> str:
    return f"/api/acp?sessionId={session_id}&replay=all"


# -- caps: no lockout ---------------------------------------------------------------------


async def test_idle_client_cannot_lock_out_a_session(
    make_gw, pool, workspace_id, append
):
    """Today 100 idle streams of one client fill MAX_SUBSCRIBERS and every other viewer
    gets 429; now that client stops at MAX_CLIENT_STREAMS (default 50) and others get in.
    """
    gw = await make_gw()
    sid = await insert_session(pool, workspace_id)
    fanout = gw.app[HUB]
    # another client (another address) already reading
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as http:
        base = f"http://{gw.host}:{gw.port}"
        fast = await http.get(base + stream_url(sid))
        assert fast.status == 200
        reader = Reader(fast)
        idle: list[aiohttp.ClientResponse] = []
        refused = None
        for _ in range(101):
            resp = await gw.get(stream_url(sid))
            if resp.status != 200:
                refused = resp
                break
            idle.append(resp)
        assert refused is not None
        assert refused.status == 429
        body = await refused.json()
        assert set(body) == {"error"}
        assert "MAX_CLIENT_STREAMS=50" in body["error"]
        assert len(idle) == 50
        # the session still takes viewers from elsewhere, and the first one reads on
        late = await http.get(base + stream_url(sid))
        assert late.status == 200
        ids = await append(sid, *(chunk(f"c{i}") for i in range(20)))
        await wait_until(lambda: reader.ids[-1:] == ids[-1:], "the fast reader")
        assert reader.ids == list(range(reader.ids[0], ids[-1] + 1))
        assert not reader.ended
        assert fanout.subscriber_count(sid) == 52
        for resp in idle:
            resp.close()
        late.close()
        await reader.close()


async def test_client_cap_counts_per_token(make_gw, pool, auth_tokens, two_workspaces):
    ws_a, _ = two_workspaces
    gw = await make_gw(auth_tokens=auth_tokens, max_client_streams=2)
    sid = await insert_session(pool, ws_a)
    streams = [await gw.get(stream_url(sid), headers=bearer(TOKEN_A)) for _ in range(2)]
    assert [s.status for s in streams] == [200, 200]
    over = await gw.get(stream_url(sid), headers=bearer(TOKEN_A))
    assert over.status == 429
    assert (await over.json())["error"] == (
        "Too many event streams from this client (MAX_CLIENT_STREAMS=2)"
    )
    # another token on the same session and address is another client
    admin = await gw.get(stream_url(sid), headers=bearer(TOKEN_ALL))
    assert admin.status == 200
    fanout = gw.app[HUB]
    streams[0].close()
    await wait_until(lambda: fanout.subscriber_count(sid) == 2, "a stream to close")
    again = await gw.get(stream_url(sid), headers=bearer(TOKEN_A))
    assert again.status == 200
    for resp in (streams[1], admin, again):
        resp.close()


async def test_session_cap_names_max_subscribers(make_gw, pool, workspace_id):
    gw = await make_gw(max_subscribers=1)
    sid = await insert_session(pool, workspace_id)
    first = await gw.get(stream_url(sid))
    assert first.status == 200
    over = await gw.get(stream_url(sid))
    assert over.status == 429
    assert (await over.json())["error"] == (
        f"Too many event streams for session {sid} (MAX_SUBSCRIBERS=1)"
    )
    first.close()


# -- a stream's own budget ----------------------------------------------------------------


async def fast_and_slow(gw, sid: str):
    """A reading subscriber, then a never-reading one: (reader, its sub, slow sub, socket)."""
    fanout = gw.app[HUB]
    fast = Reader(await gw.get(stream_url(sid)))
    await wait_until(lambda: fanout.subscriber_count(sid) == 1, "the fast stream")
    [fast_sub] = fanout.subscribers(sid)
    [sock] = await never_readers(gw.port, sid, 1)
    await wait_until(lambda: fanout.subscriber_count(sid) == 2, "the slow stream")
    [slow_sub] = [s for s in fanout.subscribers(sid) if s is not fast_sub]
    return fast, fast_sub, slow_sub, sock


async def test_stream_with_old_unreceived_bytes_is_closed_and_replays(
    make_gw, pool, workspace_id, append
):
    """Bytes its client left unreceived for STREAM_BACKLOG_SECONDS close a stream; a fast
    subscriber of the same session is untouched, and a reconnect replays exactly."""
    gw = await make_gw(stream_backlog_seconds=1.0)
    sid = await insert_session(pool, workspace_id)
    fast, fast_sub, slow_sub, sock = await fast_and_slow(gw, sid)
    # 20 KB: far below every byte budget, more than the never-reader's window
    ids = await append(sid, *(chunk(f"{i}:" + "x" * 2000) for i in range(10)))
    await wait_until(lambda: slow_sub.closed, "the slow stream to close")
    assert slow_sub.closed_reason == "lagging"
    await wait_until(lambda: fast.ids[-1:] == ids[-1:], "the fast reader")
    assert fast.ids == list(range(1, ids[-1] + 1))
    assert not fast.ended
    assert not fast_sub.closed
    sock.close()
    # the client comes back with the last id it has: exactly the rest, in order
    resp = await gw.get(stream_url(sid), headers={"Last-Event-ID": str(ids[2])})
    assert resp.status == 200
    replayed = await SseReader(resp).until_connected()
    assert [int(f.id or 0) for f in replayed] == list(range(ids[2] + 1, ids[-1] + 1))
    resp.close()
    await fast.close()


async def test_stream_over_its_byte_budget_is_closed(
    make_gw, pool, workspace_id, append
):
    gw = await make_gw(stream_backlog_bytes=16 * 1024, stream_backlog_seconds=600)
    sid = await insert_session(pool, workspace_id)
    fast, fast_sub, slow_sub, sock = await fast_and_slow(gw, sid)
    # 40 KB: over the budget for the never-reader (its window is 4 KiB), while the
    # fast reader's window takes it all even before the reader gets to it
    ids = await append(sid, *(chunk(f"{i}:" + "y" * 4000) for i in range(10)))
    await wait_until(lambda: slow_sub.closed, "the slow stream to close")
    assert slow_sub.closed_reason == "backlog"
    await wait_until(lambda: fast.ids[-1:] == ids[-1:], "the fast reader")
    assert fast.ids == list(range(1, ids[-1] + 1))
    assert not fast.ended
    assert not fast_sub.closed
    sock.close()
    await fast.close()


# -- the process-wide budget ----------------------------------------------------------------


def _payload(session_id: str, event_id: int, size: int) -> bytes:
    payload = (
        f'{{"sessionId":"{session_id}","eventId":"{event_id}",'
        f'"update":{{"sessionUpdate":"agent_message_chunk","text":"{"z" * size}"}}}}'
    )
    return payload.encode()


async def test_process_budget_closes_the_largest_backlog_first(redis_url) -> None:
    """Over STREAMS_BUFFER_BYTES the largest backlog goes first; a subscriber that keeps
    up on the same session, and a smaller backlog elsewhere, stay open."""
    from services.common.hub import StreamLimits

    names = Channels(f"budget-{uuid.uuid4().hex[:8]}")
    limits = StreamLimits(total_bytes=800_000)
    fanout = Hub(redis_url, StreamConfig(), limits)
    big, small = str(uuid.uuid4()), str(uuid.uuid4())

    async def subscribe(session_id: str, client: str) -> Subscriber:
        return await fanout.subscribe(
            session_id, names.session_events(session_id), encode_event, client=client
        )

    stuck = await subscribe(big, "addr:a")  # never takes from its queue
    keeping_up = await subscribe(big, "addr:b")
    other = await subscribe(small, "addr:c")
    got: list[int] = []

    def take() -> None:  # the keeping-up stream's writer
        while not keeping_up.queue.empty():
            item = keeping_up.queue.get_nowait()
            assert isinstance(item, tuple)
            got.append(item[0])
        keeping_up.taken()

    for i in range(1, 31):  # about 300 KB queued for `other`
        fanout.dispatch(names.session_events(small), _payload(small, i, 10_000))
    for i in range(1, 101):  # 1 MB for the big session: over the budget on the way
        fanout.dispatch(names.session_events(big), _payload(big, i, 10_000))
        take()
    assert stuck.closed_reason == "memory"
    assert not other.closed
    assert not keeping_up.closed
    assert got == list(range(1, 101))
    assert fanout.held.frames + fanout.held.pending <= limits.total_bytes
    for sub in (stuck, keeping_up, other):
        await fanout.unsubscribe(sub)
    assert fanout.held.frames == 0
    assert fanout.client_count("addr:a") == 0
    await fanout.stop()


# -- a real gateway: RSS and a fast subscriber under a flood --------------------------------


@pytest.fixture
def gateway_process(
    database_url: str, redis_url: str, tmp_path: Path
) -> Callable[..., Any]:
    """Starts `python -m services.gateway` with extra environment; stopped at exit."""

    @contextlib.asynccontextmanager
    async def _start(**env: str) -> AsyncIterator[Proc]:
        data = tmp_path / "data"
        (data / "workspaces").mkdir(parents=True)
        proc = start_service(
            "services.gateway",
            f"slow-{uuid.uuid4().hex[:8]}",
            free_port(),
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": f"test-{RUN_ID}",
                "DATA_DIR": str(data),
                "LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),
                **env,
            },
            tmp_path,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, proc.url, "/readyz")
            yield proc
        finally:
            stop(proc)

    return _start


async def rpc(http: aiohttp.ClientSession, base: str, method: str, params: dict) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with http.post(f"{base}/api/acp", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def open_acp_streams(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(r'^routa_sse_streams_open\{stream="acp"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


class FloodReader:
    """Reads a stream line by line as fast as it comes; `done` when a live turn completes."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.kinds: list[str] = []
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.ended = False

    async def run(self, http: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with http.get(url, timeout=timeout) as resp:
            assert resp.status == 200, await resp.text()
            event_id: int | None = None
            async for raw in resp.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"id: "):
                    event_id = int(line[4:])
                elif line.startswith(b"data: "):
                    kind = orjson.loads(line[6:])["params"]["update"]["sessionUpdate"]
                    if event_id is None:  # the connected frame
                        self.connected.set()
                        continue
                    self.ids.append(event_id)
                    self.kinds.append(kind)
                    event_id = None
                    if kind == "turn_complete" and self.connected.is_set():
                        self.done.set()  # a live turn ended (not one replayed)
        self.ended = True
        self.done.set()


async def flood_with_never_readers(
    proc: Proc, workspace: str, count: int, flood: int
) -> tuple[int, int, FloodReader, int]:
    """(RSS before the streams, peak RSS, in KiB; the fast reader; streams left open)."""
    left = -1
    pid = proc.popen.pid
    async with aiohttp.ClientSession() as http:
        created = await rpc(http, proc.url, "session/new", {"workspaceId": workspace})
        sid = created["result"]["sessionId"]
        # a first turn: the agent is up and warm before RSS is read
        first = await rpc(
            http, proc.url, "session/prompt", {"sessionId": sid, "prompt": "hi"}
        )
        assert first["result"]["stopReason"] == "end_turn", first
        before = rss_kib(pid)
        reader = FloodReader()
        task = asyncio.create_task(
            reader.run(http, f"{proc.url}/api/acp?sessionId={sid}")
        )
        socks: list[socket.socket] = []
        try:
            async with asyncio.timeout(WAIT):
                await reader.connected.wait()
                socks = await never_readers(proc.port, sid, count)
                while await open_acp_streams(http, proc.url) < count + 1:
                    await asyncio.sleep(0.1)
                reply = await rpc(
                    http,
                    proc.url,
                    "session/prompt",
                    {"sessionId": sid, "prompt": f"/flood {flood}"},
                )
                assert reply["result"]["stopReason"] == "end_turn", reply
                await reader.done.wait()
                # every never-reader has bytes it did not take: each is closed at the
                # latest STREAM_BACKLOG_SECONDS after them
                while (left := await open_acp_streams(http, proc.url)) > 1:
                    await asyncio.sleep(0.1)
            peak = rss_kib(pid, "VmHWM")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for sock in socks:
                sock.close()
    return before, peak, reader, left


@pytest.mark.parametrize(
    ("count", "bound_mib"),
    [
        pytest.param(300, 112, id="300-streams"),
        pytest.param(1000, 128, id="1000-streams", marks=pytest.mark.bench),
    ],
)
@pytest.mark.timeout(300)
async def test_never_reading_streams_and_a_flood_keep_rss_bounded(
    gateway_process, workspace_id, count: int, bound_mib: int
) -> None:
    """`count` never-reading streams and `/flood 50000` on one session: the gateway's peak
    RSS stays within `bound_mib` of its RSS before they connected (before the stream
    budgets: +228 MiB for 300, +520 MiB for 1,000), they are all closed, and a fast
    subscriber gets every event in order on one connection. The caps are raised so that
    all of them connect.

    The process budgets are set here, below their defaults: with the defaults (64 MiB of
    unsent stream bytes, 32 MiB of events waiting for Postgres) the gateway may rightly
    hold more than `bound_mib`, and does when the kernel keeps little in its socket
    buffers (seen on a loaded CI machine: +78 MiB). What is left of the bound pays for
    the connections themselves, the queues' slots and the allocator.

    The 300-stream bound has room for a peak seen in about one run in four, in CI and on
    a quiet machine: +18 to +47 MiB usually, +80 MiB when the 300 streams are
    closed together and the flood they held back speeds up (RSS sampled every 50 ms
    jumps by 30 to 40 MiB within 0.3 s of the close). Its cause is not yet known; the
    bound still fails the unbounded behaviour this test was written against. (The
    1,000-stream bound, a benchmark outside the default run, was not re-examined.)
    """
    flood = 50_000
    caps = str(count + 10)
    budgets = {
        "STREAMS_BUFFER_BYTES": str(8 * 1024 * 1024),
        "EVENT_BUFFER_BYTES": str(4 * 1024 * 1024),
    }
    async with gateway_process(
        MAX_SUBSCRIBERS=caps, MAX_CLIENT_STREAMS=caps, **budgets
    ) as proc:
        before, peak, reader, left = await flood_with_never_readers(
            proc, workspace_id, count, flood
        )
    grew_mib = (peak - before) / 1024
    assert grew_mib <= bound_mib, f"RSS {before // 1024} MiB → peak {peak // 1024} MiB"
    assert left == 1  # the never-readers were closed, the fast reader was not
    assert not reader.ended
    assert reader.ids == list(range(reader.ids[0], reader.ids[0] + len(reader.ids)))
    flood_turn = reader.kinds[
        len(reader.kinds) - 1 - reader.kinds[::-1].index("user_message") :
    ]
    assert flood_turn.count("agent_message_chunk") == flood
    assert flood_turn[-1] == "turn_complete"
