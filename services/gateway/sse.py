"""`GET /api/acp?sessionId=`: a session's event stream.

Order on connect: subscribe (live events queue up) → replay from the Postgres log → the
connected frame → live. The stream remembers the last eventId it wrote: live events at or
below it are dropped and a jump is filled from the log first, so no event is missed or
repeated at the replay/live seam, after a Redis outage or anywhere else. Frames are encoded
once (shared.events.sse_frame) and written by the common SSE writer (services/common/sse.py),
fed by the process's hub (services/common/hub.py), which closes a stream whose client
does not keep up (StreamLimits).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from services.common.apidoc import SSE, Param, api
from services.common.auth import PRINCIPAL, Principal, share_of
from services.common.http import error_response
from services.common.hub import Hub, Subscriber
from services.common.keys import (
    AUTH,
    CHANNELS,
    HUB,
    PG_POOL,
    REVOCATIONS,
    SETTINGS,
    STREAM_CONFIG,
)
from services.common.sse import SseWriter, pump, track
from services.gateway.fanout import encode_event, on_lifecycle
from shared.db import session_events, sessions
from shared.db import shares as shares_db
from shared.db.connect import Pool
from shared.errors import BadRequest
from shared.events import sse_frame
from shared.jsonutil import dumps
from shared.models.limits import parse_uint

logger = logging.getLogger(__name__)

PAGE = 1000


def connected_frame(session_id: str) -> bytes:
    """The frame sent between replay and live; it never carries an id."""
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

    __slots__ = ("last", "pool", "session_id", "writer")

    def __init__(
        self,
        writer: SseWriter,
        pool: Pool,
        session_id: uuid.UUID,
        last: int,
    ) -> None:
        self.writer = writer
        self.pool = pool
        self.session_id = session_id
        self.last = last

    async def catch_up(self, upto: int | None = None) -> None:
        """Write stored events after `last` (up to `upto`, or all) in pages."""
        while upto is None or self.last < upto:
            limit = PAGE if upto is None else min(PAGE, upto - self.last)
            events = await session_events.after(
                self.pool, self.session_id, self.last, limit
            )
            if not events:
                return
            await self.writer.write_frames(
                [sse_frame(e.event_id, e.payload) for e in events]
            )
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
                    await self.writer.write_frames(out)
                    out = []
                await self.catch_up(upto=event_id - 1)
                if event_id <= self.last:
                    continue
            out.append(frame)
            self.last = event_id
        if out:
            await self.writer.write_frames(out)


def _last_event_id(request: web.Request) -> str | None:
    """The header wins over the query; an empty value counts as absent."""
    value = request.headers.get("Last-Event-ID")
    if value:
        return value
    value = request.query.get("lastEventId")
    return value or None


@api(
    "A session's events as Server-Sent Events: replay, `connected`, then live",
    "acp",
    SSE,
    (400, 404),
    (
        Param("sessionId", required=True, description="Session id (UUID)"),
        Param(
            "Last-Event-ID",
            "header",
            schema={"type": "string", "pattern": "^[0-9]+$"},
            description="Replay the events after this eventId (reconnects send it)",
        ),
        Param("lastEventId", description="The same, for clients that set no header"),
        Param("replay", schema={"enum": ["all"]}, description="Replay from the start"),
        Param(
            "probe",
            schema={"enum": ["1"]},
            description="Check the stream could open: 204, no stream",
        ),
        Param("access_token", description="A token, for EventSource (no headers)"),
    ),
    also={204: ""},
    description=(
        "Frames: `id: <eventId>` and `data: <event JSON>` per stored event, a "
        "`connected` frame after the replay, `: ping` comments as heartbeats. 429 "
        "when the per-session or per-client stream cap is reached."
    ),
)
async def handle_stream(request: web.Request) -> web.StreamResponse:
    """Checks first (parameters, auth, session), then subscribe → replay → connected → live."""
    app = request.app
    session_key = request.query.get("sessionId")
    if not session_key:
        return error_response(400, "Missing sessionId query param")
    pool = app[PG_POOL]
    session_id = sessions.parse_session_id(session_key)
    # whether it exists, not the whole row: this frame lives as long as the stream, and
    # a session model held by each of 1,000 streams was 3 KB apiece (tracemalloc)
    if session_id is None or await sessions.workspace_of(pool, session_id) is None:
        return error_response(404, "Session not found")
    session_key = str(session_id)
    raw_last = _last_event_id(request)
    if raw_last is not None:
        # checked before any header is sent: past a bigint is a 400 too
        try:
            raw_last = str(parse_uint(raw_last, "Last-Event-ID"))
        except BadRequest as err:
            return error_response(400, err.message)
    replay = request.query.get("replay")
    if replay is not None and replay != "all":
        return error_response(400, f"Invalid replay: {replay} (only 'all' is accepted)")
    if request.query.get("probe") == "1":
        return web.Response(status=204)

    hub = app[HUB]
    client = _client_key(request)
    refused = hub.refusal(session_key, client)
    if refused is not None:
        # checked and subscribed with no await between: the caps hold under a burst
        return error_response(429, refused)
    grant = share_of(request)
    sub = await hub.subscribe(
        session_key,
        app[CHANNELS].session_events(session_key),
        encode_event,
        client=client,
        share_id=grant.share_id if grant is not None else None,
    )
    expiry = _watch_share(app, sub, grant)
    untrack = track(app, "acp", sub)
    writer = SseWriter(sub)
    try:
        await writer.prepare(request)
        start = await _replay_start(pool, session_id, raw_last, replay)
        stream = _Stream(writer, pool, session_id, start)
        await stream.catch_up()
        await writer.write(connected_frame(session_key))
        await pump(writer, stream.deliver, stream.catch_up)
    except ConnectionResetError:
        pass  # the client left; the agent goes on
    except (OSError, asyncpg.PostgresError) as err:
        # Headers are out, so no error body: end the stream, the client reconnects.
        if not sub.closed:  # else the fan-out dropped the connection and logged it
            logger.warning("event stream of %s ended: %s", session_key, err)
    finally:
        if expiry is not None:
            expiry.cancel()
        untrack()
        await hub.unsubscribe(sub)
    return writer.resp


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
    pool: Pool, session_id: uuid.UUID, raw_last: str | None, replay: str | None
) -> int:
    """The eventId after which replay starts."""
    if raw_last is not None:
        # Beyond the last stored id: nothing to replay, and live starts right after the
        # head (read after subscribing, so nothing newer can slip by).
        row = await sessions.get_row(pool, session_id)
        return min(int(raw_last), row.last_event_id if row is not None else 0)
    if replay == "all":
        return 0
    turn = await session_events.latest_turn_start(pool, session_id)
    return turn - 1 if turn is not None else 0


def close_session_streams(app: web.Application, session_id: str) -> int:
    """End every stream of a session on this process (called when it is deleted)."""
    hub = app.get(HUB)
    return hub.close_topic(session_id, "deleted") if hub is not None else 0


async def fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owns the hub; after the Redis ctx so Redis is closed after it stops."""
    hub = Hub.from_settings(
        app[SETTINGS],
        app.get(STREAM_CONFIG),
        "event fan-out",
        sharded=app[CHANNELS].sharded,  # session channels on SSUBSCRIBE
    )
    hub.listen(app[CHANNELS].workspace_sessions_pattern, on_lifecycle(hub))
    app[HUB] = hub
    await hub.start()
    yield
    await hub.stop()


async def close_streams_on_shutdown(app: web.Application) -> None:
    """on_shutdown: a sentinel in every queue, so handlers return at once."""
    hub = app.get(HUB)
    if hub is not None:
        hub.close_all("shutdown")


def end_streams_of_revoked_shares(app: web.Application) -> None:
    """Revoking a share link ends its streams on every gateway (services/common/shares.py)."""

    def on_revoked(share_id: str) -> None:
        hub = app.get(HUB)
        if hub is not None:
            hub.close_share(share_id)

    async def on_resync() -> None:
        hub = app.get(HUB)
        open_ids = hub.share_ids() if hub is not None else set()
        if not open_ids or hub is None:
            return
        alive = await shares_db.existing(app[PG_POOL], sorted(open_ids))
        for share_id in open_ids - alive:
            hub.close_share(share_id)

    revocations = app[REVOCATIONS]
    revocations.on_revoked.append(on_revoked)
    revocations.on_resync.append(on_resync)
