"""The baselines as one bare aiohttp process (no product code on the hot path):
/bytes the list body from memory, /pg the uncached Postgres path (same SQL and
serialisation as the product's miss), /events + /produce a fan-out that encodes each event
once and writes it to every stream."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import uvloop
from aiohttp import web

from shared.db import sessions as sessions_db
from shared.db.connect import create_pool

BODY = web.AppKey("body", bytes)
SUBS = web.AppKey("subs", set)
POOL = web.AppKey("pool", object)
TASKS = web.AppKey("tasks", set)


async def bytes_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[BODY],
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def pg_handler(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        rows = await sessions_db.list_sessions(
            conn,
            workspace_id=request.query["workspaceId"],
            parent_session_id=None,
            status=None,
            limit=int(request.query.get("limit", "50")),
        )
    body = b'{"sessions":[' + b",".join(s.wire_json() for s in rows) + b"]}"
    return web.Response(body=body, content_type="application/json")


async def events_handler(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    request.app[SUBS].add(queue)
    try:
        await resp.write(b": connected\n\n")
        while (frame := await queue.get()) is not None:
            await resp.write(frame)
    finally:
        request.app[SUBS].discard(queue)
    return resp


async def produce(app: web.Application, rate: float, count: int) -> None:
    start = time.monotonic_ns() + 5_000_000
    step = 1e9 / rate
    for i in range(count):
        due = start + int(i * step)
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        data = (
            b'{"jsonrpc":"2.0","method":"session/update","params":{"eventId":%d,'
            b'"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text",'
            b'"text":"%d"}}}}' % (i + 1, due)
        )
        frame = b"id: %d\ndata: %s\n\n" % (i + 1, data)
        for queue in app[SUBS]:
            queue.put_nowait(frame)


async def produce_handler(request: web.Request) -> web.Response:
    task = asyncio.create_task(
        produce(request.app, float(request.query["rate"]), int(request.query["count"]))
    )
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.Response(text="ok")


async def pool_ctx(app: web.Application):
    app[POOL] = await create_pool(os.environ["DATABASE_URL"], min_size=10, max_size=10)
    yield
    await app[POOL].close()  # type: ignore[attr-defined]


def main() -> None:
    app = web.Application()
    app[BODY] = Path(sys.argv[2]).read_bytes()
    app[SUBS] = set()
    app[TASKS] = set()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/bytes", bytes_handler)
    app.router.add_get("/pg", pg_handler)
    app.router.add_get("/events", events_handler)
    app.router.add_post("/produce", produce_handler)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
