"""One definition of a stored event's bytes (shared.events), whoever writes the event.

The query service (a rename) and the gateway's event writer record the same event; the
gateway's stream frames both with the same bytes, which are `shared.events.encode` inside
`shared.events.sse_frame`, and the query service's history serves the same payloads.
"""

from __future__ import annotations

import uuid

from services.gateway.eventlog import EventWriter
from services.query.app import create_app as create_query
from shared.events import encode, gateway_update, sse_frame
from tests.gateway.test_sse import open_stream

NAME = 'Same name ü \u2028 "quoted"'


async def test_gateway_and_query_service_frame_identical_bytes(
    gateway,
    make_settings,
    aiohttp_client,
    new_session,
    pool,
    redis,
    channels,
    workspace_id,
) -> None:
    query = await aiohttp_client(create_query(make_settings()))
    sid = await new_session()
    resp, reader = await open_stream(gateway, sid)
    assert await reader.until_connected() == []
    params = gateway_update("session_renamed", name=NAME)

    # event 1: written by the query service (PATCH renames and records the event)
    patched = await query.patch(f"/api/sessions/{sid}", json={"name": NAME})
    assert patched.status == 200, await patched.text()
    # event 2: the same event through the gateway's writer (as when an agent renames)
    writer = EventWriter(
        pool, redis, channels, uuid.UUID(sid), workspace_id=workspace_id
    )
    writer.append(params)
    await writer.flush()
    await writer.close()

    by_query, by_gateway = await reader.events(2)
    resp.close()
    assert by_query.raw == sse_frame(1, encode(sid, 1, params))
    assert by_gateway.raw == sse_frame(2, encode(sid, 2, params))
    # the same bytes but for the id they were given
    assert _without_id(by_query.raw, 1) == _without_id(by_gateway.raw, 2)

    history = await query.get(f"/api/sessions/{sid}/history")
    assert history.status == 200
    body = await history.read()
    assert encode(sid, 1, params) in body
    assert encode(sid, 2, params) in body


def _without_id(frame: bytes, event_id: int) -> bytes:
    """The frame with its eventId (in `id:` and in the payload) blanked out."""
    once = frame.replace(b"id: %d\n" % event_id, b"id: N\n", 1)
    return once.replace(b'"eventId":"%d"' % event_id, b'"eventId":"N"', 1)
