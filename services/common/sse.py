"""The one SSE writer of both processes: headers, frames, heartbeats, the live loop.

A stream is a `Hub` subscriber plus a `StreamResponse`. Frames arrive encoded once by the
hub (the same bytes for every stream) and are written with `StreamResponse.write`, at
most WRITE_SLICE bytes at a time and only once the socket took the previous write
(`Subscriber.writable`), so a client that does not read leaves little in this process
before the hub closes its stream (StreamLimits). Heartbeats are the hub ticker's
`Marker.HEARTBEAT`, written as a `: ping` comment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from services.common.http import stamp_request_id
from services.common.hub import Marker, Subscriber
from services.common.keys import METRICS

# bytes handed to the transport per write, at most (a single frame may be more)
WRITE_SLICE = 64 * 1024
HEARTBEAT = b": ping\n\n"
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "X-Accel-Buffering": "no",
}

Deliver = Callable[[list[tuple[int, bytes]]], Awaitable[None]]


def data_frame(payload: bytes) -> bytes:
    """A `data:` frame without id: the payload is one line of JSON."""
    return b"data: " + payload + b"\n\n"


def data_event(payload: bytes) -> tuple[int, bytes]:
    """A hub encoder for streams without ids (query service)."""
    return (0, data_frame(payload))


def track(app: web.Application, kind: str, sub: Subscriber) -> Callable[[], None]:
    """Count one open stream of `kind`; the result, called once when it ends, also
    counts why the hub closed it (slow client, process budget)."""
    metrics = app.get(METRICS)
    untrack = metrics.track_stream(kind) if metrics is not None else None

    def end() -> None:
        if untrack is not None:
            untrack()
        if metrics is not None:
            metrics.subscriber_closed(sub.closed_reason)

    return end


class SseWriter:
    """Writes to one stream's response, counting what its subscriber has in flight."""

    __slots__ = ("resp", "sub")

    def __init__(self, sub: Subscriber) -> None:
        self.resp = web.StreamResponse(headers=STREAM_HEADERS)
        self.sub = sub

    async def prepare(self, request: web.Request) -> None:
        """Sends the stream's headers; the hub watches its socket from here on."""
        stamp_request_id(request, self.resp)
        await self.resp.prepare(request)
        self.sub.attach(request.transport)

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

    async def write_events(self, items: list[tuple[int, bytes]]) -> None:
        """The default delivery: every frame as queued."""
        await self.write_frames([frame for _, frame in items])


async def pump(
    writer: SseWriter,
    deliver: Deliver | None = None,
    resync: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Write queued events until the stream is closed.

    `deliver` writes a batch of events (default: as they are); `resync` catches up after
    a possible hole in live delivery (streams without a log have none).
    """
    sub = writer.sub
    send = deliver or writer.write_events
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
                    await send(events)
                return
            if item is Marker.RESYNC:
                sub.resync_pending = False
                if resync is not None:
                    if events:
                        await send(events)
                    events = []
                    await resync()
            elif item is Marker.HEARTBEAT:
                heartbeat = True
            else:
                events.append(item)
        if events:
            await send(events)
        elif heartbeat:
            await writer.write(HEARTBEAT)
