"""Session routes of the query service: thin handlers over shared.db."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from typing import Any

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from services.common.apidoc import Param, api, list_of, ref, wrap
from services.common.auth import allowed_workspaces
from services.common.http import (
    POSTGRES_ERRORS,
    error_response,
    json_response,
    postgres_calls,
    read_json_body,
)
from services.common.keys import CHANNELS, PG_POOL, REDIS
from services.query.apiparams import LIMIT, SID, WS
from services.query.keys import LIST_CACHE
from services.query.session_views import (
    ListQuery,
    clean_name,
    consolidate,
    fork_name,
    parse_history_query,
    parse_list_query,
    touched_files,
)
from shared import cache
from shared.db import queued_prompts, session_events
from shared.db import sessions as sessions_db
from shared.db import workspaces as workspaces_db
from shared.db.connect import Executor
from shared.errors import BadRequest, SessionNotFound
from shared.events import encode_batch, gateway_update, publish, record, store
from shared.jsonutil import dumps, loads
from shared.models.session import SESSION_STATUSES, Session

logger = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}
LIST_ERROR = "Failed to load sessions from database"
PG_TIMEOUT = 5.0
REDIS_TIMEOUT = 0.5
# lastActivity may lag by up to 1 s while a turn runs: the gateway's event writers rely on
# this bound and do not invalidate the lists for lastActivity during a turn
ACTIVE_LIST_TTL = 1.0


def session_id_of(request: web.Request) -> uuid.UUID:
    """The session id of a /api/sessions/{session_id}/… route; 404 when it is no UUID."""
    session_id = sessions_db.parse_session_id(request.match_info["session_id"])
    if session_id is None:
        raise SessionNotFound(request.match_info["session_id"])
    return session_id


def _json_bytes(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="application/json", headers=NO_STORE
    )


# --- GET /api/sessions ---------------------------------------------------------------


@api(
    "List sessions, newest first (Cache-Control: no-store)",
    "sessions",
    list_of("sessions", Session),
    (400, 500),
    (
        WS,
        Param("parentSessionId"),
        Param("status", schema={"enum": list(SESSION_STATUSES)}),
        LIMIT,
    ),
)
async def list_sessions(request: web.Request) -> web.Response:
    """Cached bytes when fresh; else Postgres once, serialised once, offered to the cache."""
    query = parse_list_query(request.query)
    allowed = allowed_workspaces(request)
    if allowed is not None and query.workspace_id is None:
        # a scoped token without workspaceId sees only its workspaces
        if len(allowed) != 1:
            return await _scoped_list(request, query, allowed)
        query = dataclasses.replace(query, workspace_id=next(iter(allowed)))
    list_cache = request.app[LIST_CACHE]
    body = list_cache.hit(query.workspace_id, query.cache_key)
    if body is not None:
        return _json_bytes(body)
    hit = await list_cache.lookup(query.workspace_id, query.cache_key)
    if hit.fresh and hit.body is not None:
        return _json_bytes(hit.body)
    try:
        async with asyncio.timeout(PG_TIMEOUT), request.app[PG_POOL].acquire() as conn:
            rows = await sessions_db.list_sessions(
                conn,
                workspace_id=query.workspace_id,
                parent_session_id=query.parent_session_id,
                status=query.status,
                limit=query.limit,
            )
            lease_left, any_active = await sessions_db.list_freshness(
                conn, query.workspace_id
            )
    except (*POSTGRES_ERRORS, asyncpg.PostgresError) as err:
        if hit.body is not None:
            # an entry past its freshness bound still beats no answer while Postgres is down
            return _json_bytes(hit.body)
        logger.warning("session list: postgres failed: %r", err)
        return error_response(500, LIST_ERROR)
    body = b'{"sessions":[' + b",".join(s.wire_json() for s in rows) + b"]}"
    if hit.generation is not None:
        ttl = float(cache.LIST_TTL_SECONDS)
        if lease_left is not None:
            ttl = min(ttl, lease_left)
        if any_active:
            ttl = min(ttl, ACTIVE_LIST_TTL)
        if ttl > 0:
            await list_cache.store(
                query.workspace_id,
                query.cache_key,
                hit.generation,
                body,
                ttl,
                epoch=hit.epoch,
            )
    return _json_bytes(body)


async def _scoped_list(
    request: web.Request, query: ListQuery, allowed: frozenset[str]
) -> web.Response:
    """Several workspaces: each one's newest, merged newest first (not cached)."""
    rows: list[Any] = []
    try:
        async with asyncio.timeout(PG_TIMEOUT), request.app[PG_POOL].acquire() as conn:
            for workspace_id in sorted(allowed):
                rows += await sessions_db.list_sessions(
                    conn,
                    workspace_id=workspace_id,
                    parent_session_id=query.parent_session_id,
                    status=query.status,
                    limit=query.limit,
                )
    except (*POSTGRES_ERRORS, asyncpg.PostgresError) as err:
        logger.warning("session list: postgres failed: %r", err)
        return error_response(500, LIST_ERROR)
    rows.sort(key=lambda s: s.created_at, reverse=True)
    if query.matches_nothing:
        rows = []
    rows = rows[: query.limit] if query.limit else rows
    return _json_bytes(
        b'{"sessions":[' + b",".join(s.wire_json() for s in rows) + b"]}"
    )


# --- one session ---------------------------------------------------------------------


@api("One session", "sessions", wrap("session", Session), (404, 503), (SID,))
async def get_session(request: web.Request) -> web.Response:
    session_id = session_id_of(request)
    with postgres_calls():
        session = await sessions_db.get(request.app[PG_POOL], session_id)
    if session is None:
        raise SessionNotFound(str(session_id))
    return json_response({"session": session.wire()}, headers=NO_STORE)


async def _require_session(request: web.Request, session_id: uuid.UUID) -> None:
    with postgres_calls():
        found = await sessions_db.ref(request.app[PG_POOL], session_id)
    if found is None:
        raise SessionNotFound(str(session_id))


async def _record_event(
    request: web.Request, session_id: uuid.UUID, params: dict[str, Any]
) -> None:
    """Store first (raises on Postgres failure), then publish within a deadline."""
    app = request.app
    # Redis just failed: store only, subscribers catch up from the log
    redis = app[REDIS] if app[LIST_CACHE].redis_reachable else None
    with postgres_calls():
        await record(
            app[PG_POOL],
            session_id,
            [params],
            redis=redis,
            channels=app[CHANNELS],
            publish_within=REDIS_TIMEOUT * 2,
        )


async def _publish_stored(
    request: web.Request,
    session_id: uuid.UUID,
    events: list[session_events.StoredEvent],
) -> None:
    """Publish stored events within a deadline; subscribers catch up from the log."""
    app = request.app
    if not app[LIST_CACHE].redis_reachable:
        return  # Redis just failed: subscribers catch up from the log
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REDIS_TIMEOUT * 2):
            await publish(app[REDIS], app[CHANNELS], str(session_id), events)


async def _send_stop(
    request: web.Request, owner: str, session_id: uuid.UUID, reason: str
) -> None:
    """Tell the owning gateway to stop the agent; a lost message is survived (lease expiry)."""
    app = request.app
    message = dumps({"type": "stop", "sessionId": str(session_id), "reason": reason})
    try:
        async with asyncio.timeout(REDIS_TIMEOUT * 2):
            await app[REDIS].publish(app[CHANNELS].gateway_control(owner), message)
    except (RedisError, OSError, TimeoutError) as err:
        logger.warning("stop for session %s to %s not sent: %r", session_id, owner, err)


@api(
    "Rename a session (stores a session_renamed event)",
    "sessions",
    ref("Ok"),
    (400, 404, 413, 415, 503),
    (SID,),
    ref("SessionRename"),
)
async def patch_session(request: web.Request) -> web.Response:
    """Rename: persist the trimmed name, log `session_renamed`, then announce it."""
    session_id = session_id_of(request)
    await _require_session(request, session_id)
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("Invalid name")
    name = clean_name(body.get("name"))
    with postgres_calls():
        workspace_id = await sessions_db.rename(request.app[PG_POOL], session_id, name)
    if workspace_id is None:
        raise SessionNotFound(str(session_id))
    await _record_event(
        request, session_id, gateway_update("session_renamed", name=name)
    )
    await request.app[LIST_CACHE].session_changed(
        "session:updated", str(session_id), workspace_id, {"name": name}
    )
    return json_response({"ok": True})


@api(
    "Stop the agent wherever it runs, delete the session and its events",
    "sessions",
    ref("Ok"),
    (404, 503),
    (SID,),
)
async def delete_session(request: web.Request) -> web.Response:
    """Delete the row (events cascade), stop the agent wherever it runs, announce it."""
    session_id = session_id_of(request)
    with postgres_calls():
        deleted = await sessions_db.delete_with_owner(request.app[PG_POOL], session_id)
    if deleted is None:
        raise SessionNotFound(str(session_id))
    if deleted.owner_instance_id is not None:
        await _send_stop(request, deleted.owner_instance_id, session_id, "deleted")
    await request.app[LIST_CACHE].session_changed(
        "session:deleted", str(session_id), deleted.workspace_id, {}
    )
    return json_response({"ok": True})


@api(
    "Stop the agent process, keep the session (status closed)",
    "sessions",
    ref("Ok"),
    (404, 503),
    (SID,),
)
async def disconnect_session(request: web.Request) -> web.Response:
    """Close the session and release its owner, then stop the agent; idempotent."""
    session_id = session_id_of(request)
    events: list[session_events.StoredEvent] = []
    with postgres_calls():
        async with request.app[PG_POOL].acquire() as conn, conn.transaction():
            # the queue goes with the close: no instance takes up a disconnected
            # session's prompts
            dropped = await queued_prompts.delete_all(conn, session_id)
            closed = await sessions_db.close_and_release(conn, session_id)
            params = [
                gateway_update("prompt_dropped", queuedPromptId=queued_id)
                for queued_id in dropped
            ]
            if closed is not None and not closed.was_closed:
                # the gateway writes no event for a stop it was told about: we do, in
                # the same transaction, so whoever sees closed on the row finds it
                params.append(gateway_update("acp_status", status="closed"))
            if closed is not None:
                events = await store(conn, session_id, *encode_batch(params))
    if closed is None:
        raise SessionNotFound(str(session_id))
    # closed (and the lease released) before the stop goes out: whatever the owner writes
    # while it stops, the session no longer counts as running on it
    if closed.owner_instance_id is not None:
        await _send_stop(request, closed.owner_instance_id, session_id, "disconnected")
    await _publish_stored(request, session_id, events)
    if not closed.was_closed or closed.owner_instance_id is not None:
        await request.app[LIST_CACHE].session_changed(
            "session:updated",
            str(session_id),
            closed.workspace_id,
            {"status": "closed", "acpStatus": "closed"},
        )
    return json_response({"ok": True})


async def check_session_ref(
    conn: Executor, workspace_id: str, session_key: str | None
) -> None:
    """A note's or task's `sessionId` may be any string (filters match nothing for an
    unknown one), but one naming a session of another workspace is refused as unknown: 404."""
    session_id = sessions_db.parse_session_id(session_key)
    if session_id is None:
        return
    owner = await sessions_db.workspace_of(conn, session_id)
    if owner is not None and owner != workspace_id:
        raise SessionNotFound(
            str(session_key), rest_message=f"Session not found: {session_key}"
        )


@api(
    "Fork a session (no process until its first prompt)",
    "sessions",
    wrap("session", Session),
    (400, 404, 413, 415, 503),
    (SID,),
    ref("SessionFork"),
    status=201,
)
async def fork_session(request: web.Request) -> web.Response:
    """A new closed session with the source's settings, the source as parent, no events."""
    session_id = session_id_of(request)
    pool = request.app[PG_POOL]
    with postgres_calls():
        source = await sessions_db.get_row(pool, session_id)
    if source is None:
        raise SessionNotFound(str(session_id))
    body = await read_json_body(request, required=False)
    if not isinstance(body, dict):
        raise BadRequest("Body must be a JSON object")
    src = source.session
    raw_name = body.get("name")
    name = (
        clean_name(raw_name)
        if raw_name is not None
        else fork_name(src.name, src.session_id)
    )
    new = sessions_db.NewSession(
        session_id=uuid.uuid4(),
        workspace_id=src.workspace_id,
        cwd=src.cwd,
        provider=src.provider,
        role=src.role,
        name=name,
        branch=src.branch,
        mode_id=src.mode_id,
        model=src.model,
        parent_session_id=session_id,
        acp_status="closed",
        status="closed",
        owner_instance_id=None,
        # what a custom agent needs to start at the fork's first prompt
        auto_approve_permissions=source.auto_approve_permissions,
        custom_command=source.custom_command,
        custom_args=source.custom_args,
        mcp_servers=source.mcp_servers,
    )
    with postgres_calls():
        async with pool.acquire() as conn:
            await sessions_db.insert(conn, new)
            created = await sessions_db.get(conn, new.session_id)
    assert created is not None
    wire = created.wire()
    await request.app[LIST_CACHE].session_changed(
        "session:created", created.session_id, created.workspace_id, wire
    )
    return json_response({"session": wire}, status=201)


@api(
    "The stored event log, in order (Cache-Control: no-store)",
    "sessions",
    wrap("history", {"type": "array", "items": ref("Event")}),
    (400, 404, 503),
    (
        SID,
        Param(
            "after",
            schema={"type": "string", "pattern": "^[0-9]+$"},
            description="Events after this eventId (default 0)",
        ),
        LIMIT,
        Param(
            "consolidated",
            schema={"enum": ["true", "false"]},
            description="Merge runs of agent_message_chunk into agent_message",
        ),
    ),
)
async def session_history(request: web.Request) -> web.Response:
    """Stored events in order, paged; consolidated on request (applied to the page)."""
    session_id = session_id_of(request)
    query = parse_history_query(request.query)
    with postgres_calls():
        async with request.app[PG_POOL].acquire() as conn:
            if await sessions_db.ref(conn, session_id) is None:
                raise SessionNotFound(str(session_id))
            events = await session_events.after(
                conn, session_id, query.after, query.limit
            )
    if not query.consolidated:
        # stored payloads are the event objects: forwarded as bytes, never re-encoded
        return _json_bytes(
            b'{"history":[' + b",".join(e.payload for e in events) + b"]}"
        )
    merged = consolidate([loads(e.payload) for e in events])
    return _json_bytes(dumps({"history": merged}))


@api(
    "cwd, mode, model, workspace, touched files, history size, parent and children",
    "sessions",
    ref("SessionContext"),
    (404, 503),
    (SID,),
)
async def session_context(request: web.Request) -> web.Response:
    """cwd, mode, model, workspace, files touched by tool calls, history size, family."""
    session_id = session_id_of(request)
    with postgres_calls():
        async with request.app[PG_POOL].acquire() as conn:
            session = await sessions_db.get(conn, session_id)
            if session is None:
                raise SessionNotFound(str(session_id))
            tool_events = await session_events.of_kinds(
                conn, session_id, ["tool_call", "tool_call_update"]
            )
            history_length = await session_events.count(conn, session_id)
            workspace_row = await workspaces_db.get(conn, session.workspace_id)
            # family of the same workspace only: a row written before parents were
            # checked may point into another one, whose names must not show here
            parent = None
            if session.parent_session_id is not None:
                parent_id = sessions_db.parse_session_id(session.parent_session_id)
                if parent_id is not None:
                    parent = await sessions_db.ref(
                        conn, parent_id, session.workspace_id
                    )
            children = await sessions_db.children(
                conn, session_id, session.workspace_id
            )
            config_options = await sessions_db.config_options(conn, session_id)
    context: dict[str, Any] = {"sessionId": session.session_id, "cwd": session.cwd}
    if session.mode_id is not None:
        context["modeId"] = session.mode_id
    if session.model is not None:
        context["model"] = session.model
    workspace: dict[str, Any] = {"id": session.workspace_id, "codebases": []}
    if workspace_row is not None:
        workspace = {
            "id": workspace_row.id,
            "title": workspace_row.title,
            "codebases": [c.wire() for c in workspace_row.codebases],
        }
    context["workspace"] = workspace
    context["files"] = touched_files(loads(e.payload) for e in tool_events)
    context["historyLength"] = history_length
    if parent is not None:
        context["parent"] = parent.wire()
    context["children"] = [c.wire() for c in children]
    if config_options is not None:
        context["configOptions"] = config_options
    if session.usage is not None:
        context["usage"] = session.usage
    return json_response(context, headers=NO_STORE)
