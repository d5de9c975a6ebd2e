"""GET /api/acp?sessionId=: checks, headers, replay, live fan-out, the seam, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiohttp import ClientPayloadError, ClientSession, ClientTimeout, web

from services.common.keys import HUB
from tests.gateway.conftest import SseReader, chunk, user_message, wait_fanout_ready


def url(session_id: str, **query: str) -> str:
    params = "".join(f"&{k}={v}" for k, v in query.items())
    return f"/api/acp?sessionId={session_id}{params}"


async def open_stream(client, session_id: str, headers=None, **query: str):
    resp = await client.get(url(session_id, **query), headers=headers or {})
    assert resp.status == 200, await resp.text()
    return resp, SseReader(resp)


def ids(frames) -> list[int]:
    return [int(f.id) for f in frames]


# -- checks, in the documented order ---------------------------------------------------


async def test_missing_session_id_is_400(gateway) -> None:
    resp = await gateway.get("/api/acp")
    assert resp.status == 400
    assert await resp.json() == {"error": "Missing sessionId query param"}
    resp = await gateway.get("/api/acp?sessionId=&probe=1")
    assert resp.status == 400


@pytest.mark.parametrize("sid", [str(uuid.uuid4()), "session-abc123", "not a uuid"])
async def test_unknown_session_is_404_even_when_probing(gateway, sid) -> None:
    for query in ({}, {"probe": "1"}, {"lastEventId": "x"}):
        resp = await gateway.get("/api/acp", params={"sessionId": sid, **query})
        assert resp.status == 404
        assert await resp.json() == {"error": "Session not found"}


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "3a", "1e3", "+4"])
async def test_invalid_last_event_id_is_400(gateway, new_session, value) -> None:
    sid = await new_session()
    resp = await gateway.get(url(sid), headers={"Last-Event-ID": value})
    assert resp.status == 400
    assert await resp.json() == {"error": f"Invalid Last-Event-ID: {value}"}
    # the query form too, and checked before probe
    resp = await gateway.get(
        "/api/acp", params={"sessionId": sid, "lastEventId": value, "probe": "1"}
    )
    assert resp.status == 400
    assert await resp.json() == {"error": f"Invalid Last-Event-ID: {value}"}


async def test_non_ascii_digits_are_invalid(gateway, new_session) -> None:
    sid = await new_session()
    resp = await gateway.get("/api/acp", params={"sessionId": sid, "lastEventId": "٣"})
    assert resp.status == 400
    assert await resp.json() == {"error": "Invalid Last-Event-ID: ٣"}


async def test_header_wins_and_empty_header_is_absent(gateway, new_session) -> None:
    sid = await new_session()
    # a valid header hides an invalid query value
    resp = await gateway.get(
        url(sid, lastEventId="bad", probe="1"), headers={"Last-Event-ID": "2"}
    )
    assert resp.status == 204
    # an empty header counts as absent: the query value is checked
    resp = await gateway.get(
        url(sid, lastEventId="bad", probe="1"), headers={"Last-Event-ID": ""}
    )
    assert resp.status == 400
    assert await resp.json() == {"error": "Invalid Last-Event-ID: bad"}


async def test_probe_is_204_without_body(gateway, new_session) -> None:
    sid = await new_session()
    resp = await gateway.get(url(sid, probe="1"))
    assert resp.status == 204
    assert await resp.read() == b""
    assert gateway.app[HUB].subscriber_count() == 0


async def test_bad_replay_is_400_naming_it(gateway, new_session) -> None:
    sid = await new_session()
    resp = await gateway.get(url(sid, replay="some"))
    assert resp.status == 400
    assert "replay" in (await resp.json())["error"]


# -- the stream ---------------------------------------------------------------------------


async def test_headers_and_connected_frame(gateway, new_session) -> None:
    sid = await new_session()
    resp, reader = await open_stream(gateway, sid)
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    assert resp.headers["X-Accel-Buffering"] == "no"
    frame = await reader.frame()
    assert frame is not None
    assert frame.id is None
    assert frame.raw == (
        b'data: {"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"'
        + sid.encode()
        + b'","update":{"sessionUpdate":"acp_status","content":{"type":"text",'
        b'"text":"Connected to ACP session."}}}}\n\n'
    )
    resp.close()


async def test_event_frame_format(gateway, new_session, append) -> None:
    sid = await new_session()
    await append(sid, chunk("hi"))
    resp, reader = await open_stream(gateway, sid)
    frame = await reader.frame()
    assert frame is not None
    assert frame.raw.startswith(b"id: 1\ndata: {")
    assert b"event:" not in frame.raw
    assert frame.data == {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {
            "sessionId": sid,
            "eventId": "1",
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": "hi"},
            },
        },
    }
    resp.close()


async def test_default_replay_whole_log_before_first_prompt(
    gateway, new_session, append
) -> None:
    sid = await new_session()
    await append(sid, chunk("a"), chunk("b"))
    resp, reader = await open_stream(gateway, sid)
    assert ids(await reader.until_connected()) == [1, 2]
    resp.close()


async def test_default_replay_from_latest_turn(gateway, new_session, append) -> None:
    sid = await new_session()
    await append(sid, chunk("a"), user_message("one"), chunk("b"))
    await append(sid, user_message("two"), chunk("c"), chunk("d"))
    resp, reader = await open_stream(gateway, sid)
    replayed = await reader.until_connected()
    assert ids(replayed) == [4, 5, 6]
    assert replayed[0].data["params"]["update"]["sessionUpdate"] == "user_message"
    resp.close()


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"Last-Event-ID": "3"}, {}, [4, 5]),
        ({}, {"lastEventId": "2"}, [3, 4, 5]),
        ({"Last-Event-ID": "4"}, {"lastEventId": "1"}, [5]),
        ({"Last-Event-ID": "0"}, {}, [1, 2, 3, 4, 5]),
        ({"Last-Event-ID": "5"}, {}, []),
        ({"Last-Event-ID": "99"}, {}, []),
        ({}, {"replay": "all"}, [1, 2, 3, 4, 5]),
    ],
)
async def test_replay_anchor(
    gateway, new_session, append, headers, query, expected
) -> None:
    sid = await new_session()
    await append(sid, chunk("a"), chunk("b"), user_message("p"), chunk("c"), chunk("d"))
    resp, reader = await open_stream(gateway, sid, headers=headers, **query)
    assert ids(await reader.until_connected()) == expected
    # live continues right after the log's head, even after an anchor beyond it
    await append(sid, chunk("e"))
    assert ids(await reader.events(1)) == [6]
    resp.close()


async def test_two_subscribers_get_every_live_event_in_order(
    gateway, new_session, append
) -> None:
    sid = await new_session()
    streams = [await open_stream(gateway, sid) for _ in range(2)]
    for _, reader in streams:
        assert await reader.until_connected() == []
    for i in range(30):
        await append(sid, chunk(str(i)))
    await append(sid, *(chunk(f"b{i}") for i in range(20)))
    for resp, reader in streams:
        frames = await reader.events(50)
        assert ids(frames) == list(range(1, 51))
        assert frames[0].data["params"]["update"]["content"]["text"] == "0"
        resp.close()


async def test_streams_of_other_sessions_are_separate(
    gateway, new_session, append
) -> None:
    a, b = await new_session(), await new_session()
    resp_a, reader_a = await open_stream(gateway, a)
    await reader_a.until_connected()
    await append(b, chunk("b"))
    await append(a, chunk("a"))
    frame = (await reader_a.events(1))[0]
    assert frame.data["params"]["sessionId"] == a
    resp_a.close()


async def test_race_writer_and_connecting_subscribers(
    gateway, new_session, append
) -> None:
    """200 events written while streams connect: each stream is exactly contiguous."""
    sid = await new_session()
    total = 200
    await append(sid, chunk("first"))

    async def writer() -> None:
        for i in range(2, total + 1):
            await append(sid, chunk(str(i)))
            if i % 10 == 0:
                await asyncio.sleep(0)

    async def subscriber(last_event_id: str | None, query: dict) -> list[int]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        resp, reader = await open_stream(gateway, sid, headers=headers, **query)
        got: list[int] = []
        try:
            while not got or got[-1] < total:
                frame = await reader.frame()
                assert frame is not None
                if frame.is_event:
                    got.append(int(frame.id))
        finally:
            resp.close()
        return got

    async def later(delay_events: int, *args) -> list[int]:
        # connect once the writer has got at least this far
        while await _head(gateway, sid) < delay_events:
            await asyncio.sleep(0.005)
        return await subscriber(*args)

    async with asyncio.timeout(60):
        results = await asyncio.gather(
            writer(),
            subscriber(None, {"replay": "all"}),
            subscriber("0", {}),
            later(20, "10", {}),
            later(60, None, {"replay": "all"}),
            later(100, "1000", {}),
            later(150, "149", {}),
        )
    for got in results[1:]:
        assert got, "no events"
        assert got == list(range(got[0], total + 1)), got
    assert results[1][0] == 1
    assert results[2][0] == 1
    assert results[3][0] == 11
    assert results[6][0] == 150


async def _head(client, sid: str) -> int:
    from services.common.keys import PG_POOL

    value = await client.app[PG_POOL].fetchval(
        "SELECT last_event_id FROM sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    return int(value)


async def test_heartbeat_comment_without_id(make_gateway, aiohttp_client, new_session):
    client = await aiohttp_client(make_gateway(heartbeat_interval=0.05))
    await wait_fanout_ready(client.app)
    sid = await new_session()
    resp, reader = await open_stream(client, sid)
    await reader.until_connected()
    async with asyncio.timeout(10):
        frame = await reader.frame()
    assert frame is not None
    assert frame.comments == ["ping"]
    assert frame.id is None
    assert frame.raw == b": ping\n\n"
    resp.close()


async def test_slow_subscriber_is_closed_and_catches_up(
    make_gateway, aiohttp_client, new_session, append
) -> None:
    """A stream that cannot keep up is closed; reconnecting with Last-Event-ID loses nothing."""
    client = await aiohttp_client(make_gateway(queue_size=2))
    await wait_fanout_ready(client.app)
    fanout = client.app[HUB]
    sid = await new_session()
    resp, reader = await open_stream(client, sid)
    await reader.until_connected()
    [sub] = fanout.subscribers(sid)
    big = "x" * (256 * 1024)
    n = 64  # 16 MiB: more than the socket buffers hold while the client does not read
    async with asyncio.timeout(60):
        for i in range(n):
            await append(sid, chunk(f"{i}:{big}"))
            if sub.closed:
                break
        while fanout.subscriber_count(sid):
            await asyncio.sleep(0.01)
    # its queue overflowed or its unsent bytes passed STREAM_BACKLOG_BYTES, whichever came
    # first: either way a slow subscriber, closed and counted as dropped
    assert sub.closed_reason in ("overflow", "backlog")
    # counted for operators (issue 15 item 5); nothing was evicted for the budget
    metrics = await (await client.get("/metrics")).text()
    assert "\nrouta_sse_subscribers_dropped_total 1.0\n" in metrics
    assert "\nrouta_sse_subscribers_evicted_total 0.0\n" in metrics
    got: list[int] = []
    # the connection was dropped: what arrived before is whole frames, then an error
    with contextlib.suppress(ClientPayloadError):
        while (frame := await reader.frame()) is not None:
            if frame.is_event:
                got.append(int(frame.id))
    resp.close()
    last = got[-1] if got else 0
    assert got == list(range(1, last + 1))
    written = await _head(client, sid)
    assert last < written
    resp, reader = await open_stream(client, sid, headers={"Last-Event-ID": str(last)})
    assert ids(await reader.until_connected()) == list(range(last + 1, written + 1))
    resp.close()


async def test_deleted_session_ends_its_streams(
    gateway, new_session, append, redis, channels, workspace_id
):
    from shared.lifecycle import session_changed

    sid = await new_session()
    resp, reader = await open_stream(gateway, sid)
    await reader.until_connected()
    await session_changed(redis, channels, "session:deleted", sid, workspace_id, {})
    async with asyncio.timeout(10):
        while await reader.frame() is not None:
            pass
    assert gateway.app[HUB].subscriber_count(sid) == 0
    resp.close()


async def test_close_session_streams(gateway, new_session) -> None:
    from services.gateway.sse import close_session_streams

    sid = await new_session()
    streams = [await open_stream(gateway, sid) for _ in range(3)]
    for _, reader in streams:
        await reader.until_connected()
    assert close_session_streams(gateway.app, sid) == 3
    for resp, reader in streams:
        async with asyncio.timeout(10):
            while await reader.frame() is not None:
                pass
        resp.close()


async def test_shutdown_ends_open_streams(make_gateway, new_session, append) -> None:
    app = make_gateway()
    runner = web.AppRunner(app, shutdown_timeout=60)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sid = await new_session()
    fanout = app[HUB]
    async with ClientSession(timeout=ClientTimeout(total=None)) as http:
        resp = await http.get(f"http://127.0.0.1:{port}{url(sid)}")
        reader = SseReader(resp)
        await reader.until_connected()
        [sub] = fanout.subscribers(sid)
        # a hang guard only: with a 60 s shutdown_timeout, only the sentinel ends it sooner
        async with asyncio.timeout(20):
            await runner.cleanup()
        assert sub.closed_reason == "shutdown"
        assert fanout.subscriber_count() == 0  # the handler's finally ran
        assert await reader.frame() is None
        resp.close()


async def test_redis_outage_streams_poll_the_log_and_resume(
    make_settings, aiohttp_client, new_session, append, redis_url
) -> None:
    """Redis gone: live events come from the log; back: no event lost or repeated."""
    from services.common.hub import StreamConfig
    from services.common.keys import STREAM_CONFIG
    from services.gateway.app import create_app
    from tests.proxy import TcpProxy

    proxy = TcpProxy.for_url(redis_url)
    await proxy.start()
    try:
        app = create_app(make_settings(redis_url=proxy.rewrite(redis_url)))
        app[STREAM_CONFIG] = StreamConfig(poll_interval=0.05, heartbeat_interval=0.2)
        client = await aiohttp_client(app)
        fanout = app[HUB]
        await wait_fanout_ready(app)
        sid = await new_session()
        resp, reader = await open_stream(client, sid)
        await reader.until_connected()
        await append(sid, chunk("1"), chunk("2"))
        assert ids(await reader.events(2)) == [1, 2]

        await proxy.stop()  # the gateway's Redis is gone; the test still publishes
        async with asyncio.timeout(10):
            while fanout.connected.is_set():
                await asyncio.sleep(0.01)
        await append(sid, chunk("3"))
        await append(sid, chunk("4"), chunk("5"))
        async with asyncio.timeout(20):
            assert ids(await reader.events(3)) == [3, 4, 5]
            # a stream opened during the outage replays and then polls too
            resp2, reader2 = await open_stream(
                client, sid, headers={"Last-Event-ID": "4"}
            )
            assert ids(await reader2.until_connected()) == [5]
            await append(sid, chunk("6"))
            assert ids(await reader.events(1)) == [6]
            assert ids(await reader2.events(1)) == [6]

        await proxy.start()
        async with asyncio.timeout(20):
            await fanout.connected.wait()
            await append(sid, *(chunk(str(i)) for i in range(7, 31)))
            assert ids(await reader.events(24)) == list(range(7, 31))
            assert ids(await reader2.events(24)) == list(range(7, 31))
        resp.close()
        resp2.close()
    finally:
        await proxy.stop()
