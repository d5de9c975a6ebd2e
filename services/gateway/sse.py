"""`GET /api/acp?sessionId=`: a session's event stream (api.md §5.5, §9.3, §9.18).

Order on connect: subscribe (live events queue up) → replay from the Postgres log → the
connected frame → live. The stream remembers the last eventId it wrote: live events at or
below it are dropped and a jump is filled from the log first, so no event is missed or
repeated at the replay/live seam, after a Redis outage or anywhere else. Frames are encoded
once (shared.events.sse_frame) and written with `StreamResponse.write` (perf-ceilings §7), at
most WRITE_SLICE bytes at a time and only once the socket took the previous write
(`Subscriber.writable`), so a client that does not read leaves little in this process
before the fan-out closes its stream (StreamLimits).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from services.common.auth import AUTH, PRINCIPAL, Principal, share_of
from services.common.http import error_response, stamp_request_id
from services.common.keys import CHANNELS, PG_POOL, SETTINGS
from services.common.metrics import METRICS
from services.common.shares import REVOCATIONS
from services.gateway.fanout import (
    Fanout,
    Marker,
    StreamConfig,
    StreamLimits,
    Subscriber,
)
from services.gateway.keys import FANOUT, STREAM_CONFIG
from shared.db import session_events, sessions
from shared.db import shares as shares_db
from shared.db.connect import Pool
from shared.errors import BadRequest
from shared.events import sse_frame
from shared.jsonutil import dumps
from shared.models.limits import parse_uint

logger = logging.getLogger(__name__)

PAGE = 1000
# bytes handed to the transport per write, at most (a single frame may be more)
WRITE_SLICE = 64 * 1024
HEARTBEAT = b": ping\n\n"
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "X-Accel-Buffering": "no",
}


def connected_frame(session_id: str) -> bytes:
    """The frame sent between replay and live; it never carries an id (§9.1)."""
    data = {
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": {
            "sessionId": session_id,
            "update": {
                "sessionUpdate": "acp_status",
                "content": {"type": "text", "text": "Connected to ACP session."},
            },
        },
    }
    return b"data: " + dumps(data) + b"\n\n"


class _Stream:
    """One open stream: writes frames in eventId order, each at most once."""

    def __init__(
        self,
        resp: web.StreamResponse,
        sub: Subscriber,
        pool: Pool,
        session_uuid: uuid.UUID,
        last: int,
    ) -> None:
        self.resp = resp
        self.sub = sub
        self.pool = pool
        self.session_uuid = session_uuid
        self.last = last

    async def write(self, data: bytes) -> None:
        self.sub.write_started(len(data))
        try:
            await self.resp.write(data)
        finally:
            self.sub.write_done()

    async def write_frames(self, frames: list[bytes]) -> None:
        """Frames joined into writes of about WRITE_SLICE bytes."""
        out: list[bytes] = []
        size = 0
        for frame in frames:
            out.append(frame)
            size += len(frame)
            if size >= WRITE_SLICE:
                await self.write(b"".join(out))
                out = []
                size = 0
        if out:
            await self.write(b"".join(out))

    async def catch_up(self, upto: int | None = None) -> None:
        """Write stored events after `last` (up to `upto`, or all) in pages."""
        while upto is None or self.last < upto:
            limit = PAGE if upto is None else min(PAGE, upto - self.last)
            events = await session_events.after(
                self.pool, self.session_uuid, self.last, limit
            )
            if not events:
                return
            await self.write_frames([sse_frame(e.event_id, e.payload) for e in events])
            self.last = events[-1].event_id
            if len(events) < limit:
                return

    async def deliver(self, items: list[tuple[int, bytes]]) -> None:
        """Live frames: drop what was written, fill any gap from the log first."""
        out: list[bytes] = []
        for event_id, frame in items:
            if event_id <= self.last:
                continue
            if event_id > self.last + 1:
                if out:
                    await self.write_frames(out)
                    out = []
                await self.catch_up(upto=event_id - 1)
                if event_id <= self.last:
                    continue
            out.append(frame)
            self.last = event_id
        if out:
            await self.write_frames(out)


def _last_event_id(request: web.Request) -> str | None:
    """The header wins over the query; an empty value counts as absent (§9.18)."""
    value = request.headers.get("Last-Event-ID")
    if value:
        return value
    value = request.query.get("lastEventId")
    return value or None


async def handle_stream(request: web.Request) -> web.StreamResponse:
    """Checks in the order of §9.18, then subscribe → replay → connected → live."""
    app = request.app
    session_id = request.query.get("sessionId")
    if not session_id:
        return error_response(400, "Missing sessionId query param")
    pool = app[PG_POOL]
    session_uuid = sessions.parse_session_id(session_id)
    session = (
        await sessions.get(pool, session_uuid) if session_uuid is not None else None
    )
    if session is None or session_uuid is None:
        return error_response(404, "Session not found")
    raw_last = _last_event_id(request)
    if raw_last is not None:
        # checked before any header is sent: past a bigint is a 400 too (§9.3, §9.18)
        try:
            raw_last = str(parse_uint(raw_last, "Last-Event-ID"))
        except BadRequest as err:
            return error_response(400, err.message)
    replay = request.query.get("replay")
    if replay is not None and replay != "all":
        return error_response(400, f"Invalid replay: {replay} (only 'all' is accepted)")
    if request.query.get("probe") == "1":
        return web.Response(status=204)

    fanout = app[FANOUT]
    client = _client_key(request)
    refused = fanout.refusal(session.session_id, client)
    if refused is not None:
        # checked and subscribed with no await between: the caps hold under a burst
        return error_response(429, refused)
    grant = share_of(request)
    sub = await fanout.subscribe(
        session.session_id, client, grant.share_id if grant is not None else None
    )
    expiry = _watch_share(app, sub, grant)
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.sse_streams.labels("acp").inc()
    resp = web.StreamResponse(headers=STREAM_HEADERS)
    try:
        stamp_request_id(request, resp)
        await resp.prepare(request)
        sub.attach(request.transport)
        start = await _replay_start(pool, session_uuid, raw_last, replay)
        stream = _Stream(resp, sub, pool, session_uuid, start)
        await stream.catch_up()
        await stream.write(connected_frame(session.session_id))
        await _live(stream, sub)
    except ConnectionResetError:
        pass  # the client left; the agent goes on
    except (OSError, asyncpg.PostgresError) as err:
        # Headers are out, so no error body: end the stream, the client reconnects.
        if not sub.closed:  # else the fan-out dropped the connection and logged it
            logger.warning("event stream of %s ended: %s", session_id, err)
    finally:
        if expiry is not None:
            expiry.cancel()
        if metrics is not None:
            metrics.sse_streams.labels("acp").dec()
            metrics.subscriber_closed(sub.closed_reason)
        await fanout.unsubscribe(sub)
    return resp


def _client_key(request: web.Request) -> str:
    """Who opened a stream, for MAX_CLIENT_STREAMS: its token, else its address."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is not None:
        return principal.key
    return f"addr:{request.remote}"


def _watch_share(
    app: web.Application, sub: Subscriber, grant: shares_db.Grant | None
) -> asyncio.TimerHandle | None:
    """A stream opened with a share link ends when the link expires or is revoked.

    Revocations arrive through the fan-out's registry (close_share); one heard between the
    auth check and the registration is in the token store's revoked set, checked here.
    """
    if grant is None:
        return None
    if app[AUTH].store.share_revoked(grant.share_id):
        sub.close("revoked")
        return None
    if grant.expires_at is None:
        return None
    left = (grant.expires_at - datetime.now(UTC)).total_seconds()
    return asyncio.get_running_loop().call_later(max(0.0, left), sub.close, "expired")


async def _replay_start(
    pool: Pool, session_uuid: uuid.UUID, raw_last: str | None, replay: str | None
) -> int:
    """The eventId after which replay starts (§5.5, §9.3)."""
    if raw_last is not None:
        # Beyond the last stored id: nothing to replay, and live starts right after the
        # head (read after subscribing, so nothing newer can slip by).
        row = await sessions.get_row(pool, session_uuid)
        return min(int(raw_last), row.last_event_id if row is not None else 0)
    if replay == "all":
        return 0
    turn = await session_events.latest_turn_start(pool, session_uuid)
    return turn - 1 if turn is not None else 0


async def _live(stream: _Stream, sub: Subscriber) -> None:
    """Write queued events until the stream is closed; the fan-out's ticker queues heartbeats."""
    queue = sub.queue
    while True:
        # Take everything already queued: one write for a burst.
        items = [await queue.get()]
        await sub.writable()
        while not queue.empty():
            items.append(queue.get_nowait())
        sub.taken()
        events: list[tuple[int, bytes]] = []
        heartbeat = False
        for item in items:
            if item is Marker.CLOSE:
                if events:
                    await stream.deliver(events)
                return
            if item is Marker.RESYNC:
                sub.resync_pending = False
                await stream.deliver(events)
                events = []
                await stream.catch_up()
            elif item is Marker.HEARTBEAT:
                heartbeat = True
            else:
                events.append(item)
        if events:
            await stream.deliver(events)
        elif heartbeat:
            await stream.write(HEARTBEAT)


def close_session_streams(app: web.Application, session_id: str) -> int:
    """End every stream of a session on this process (called when it is deleted)."""
    fanout = app.get(FANOUT)
    return fanout.close_session(session_id, "deleted") if fanout is not None else 0


async def fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owns the listener task; after the Redis ctx so Redis is closed after it stops."""
    config = app.get(STREAM_CONFIG) or StreamConfig()
    settings = app[SETTINGS]
    fanout = Fanout(
        settings.redis_url,
        app[CHANNELS],
        config,
        StreamLimits.from_settings(settings),
    )
    app[FANOUT] = fanout
    await fanout.start()
    yield
    await fanout.stop()


async def close_streams_on_shutdown(app: web.Application) -> None:
    """on_shutdown: a sentinel in every queue, so handlers return at once (house-style §2.9)."""
    fanout = app.get(FANOUT)
    if fanout is not None:
        fanout.close_all("shutdown")


def _end_streams_of_revoked_shares(app: web.Application) -> None:
    """Revoking a share link ends its streams on every gateway (services/common/shares.py)."""

    def on_revoked(share_id: str) -> None:
        fanout = app.get(FANOUT)
        if fanout is not None:
            fanout.close_share(share_id)

    async def on_resync() -> None:
        fanout = app.get(FANOUT)
        open_ids = fanout.share_ids() if fanout is not None else set()
        if not open_ids or fanout is None:
            return
        alive = await shares_db.existing(app[PG_POOL], sorted(open_ids))
        for share_id in open_ids - alive:
            fanout.close_share(share_id)

    revocations = app[REVOCATIONS]
    revocations.on_revoked.append(on_revoked)
    revocations.on_resync.append(on_resync)


def setup(app: web.Application) -> None:
    """The GET route, the fan-out's cleanup context and the shutdown sentinel."""
    if STREAM_CONFIG not in app:
        app[STREAM_CONFIG] = StreamConfig()
    app.router.add_get("/api/acp", handle_stream)
    app.cleanup_ctx.append(fanout_ctx)
    _end_streams_of_revoked_shares(app)
    app.on_shutdown.append(close_streams_on_shutdown)
