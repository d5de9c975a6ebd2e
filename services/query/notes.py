"""/api/notes: notes of a workspace, and their live stream."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from services.common.apidoc import SSE, Param, api, deleted, list_of, wrap
from services.common.auth import require_workspace
from services.common.http import json_response, read_json_body
from services.common.keys import CHANNELS, PG_POOL, REDIS
from services.query import live
from services.query.apiparams import WS_REQ
from services.query.sessions import check_session_ref
from services.query.workspaces import ensure_workspace
from shared.channels import Channels
from shared.db import notes as db
from shared.errors import BadRequest, NotFound, UnknownWorkspace
from shared.jsonutil import dumps, now_iso
from shared.models.limits import check_id
from shared.models.note import NOTE_SOURCES, NOTE_TYPES, Note, NoteGroup, NoteWrite
from shared.models.validation import clean_title, query_value, validate_body

logger = logging.getLogger(__name__)

NO_SESSION_NAME = "No session"


def _note_type(value: str | None) -> str | None:
    if value is not None and value not in NOTE_TYPES:
        raise BadRequest(f"Invalid type: {value}")
    return value


async def _publish(
    request: web.Request,
    kind: str,
    workspace_id: str,
    note_id: str,
    source: str,
    note: Note | None,
) -> None:
    """After the commit; a Redis outage never fails the write (Postgres holds it)."""
    message: dict[str, Any] = {
        "type": kind,
        "noteId": note_id,
        "workspaceId": workspace_id,
        "source": source,
    }
    if note is not None:
        message["note"] = note.wire()
    message["at"] = now_iso()
    channels = request.app[CHANNELS]
    try:
        await request.app[REDIS].publish(
            channels.workspace_notes(workspace_id), dumps(message)
        )
    except (RedisError, OSError) as err:
        logger.warning("note message for %s not published: %s", note_id, err)


def _groups(rows: list[tuple[Note, str | None]]) -> list[dict[str, Any]]:
    """Groups with a session first, by session name; the group without one last."""
    by_session: dict[str, tuple[str, list[Note]]] = {}
    loose: list[Note] = []
    for note, session_name in rows:
        if note.session_id is None:
            loose.append(note)
            continue
        group = by_session.setdefault(
            note.session_id, (session_name or note.session_id, [])
        )
        group[1].append(note)
    ordered = sorted(by_session.items(), key=lambda kv: (kv[1][0], kv[0]))
    groups: list[dict[str, Any]] = [
        {
            "sessionId": session_id,
            "sessionName": name,
            "notes": [n.wire() for n in notes],
        }
        for session_id, (name, notes) in ordered
    ]
    if loose:
        groups.append(
            {"sessionName": NO_SESSION_NAME, "notes": [n.wire() for n in loose]}
        )
    return groups


@api(
    "Notes of a workspace ({notes}), one note (noteId → {note}) or groups (groupBy=session → {groups})",
    "notes",
    {
        "oneOf": [
            list_of("notes", Note),
            wrap("note", Note),
            list_of("groups", NoteGroup),
        ]
    },
    (400, 404, 503),
    (
        WS_REQ,
        Param("sessionId"),
        Param("type", schema={"enum": ["spec", "task", "general"]}),
        Param("noteId"),
        Param("groupBy", schema={"enum": ["session"]}),
    ),
)
async def get_notes(request: web.Request) -> web.Response:
    query = request.query
    pool = request.app[PG_POOL]
    workspace_id = await ensure_workspace(pool, query_value(query, "workspaceId"))
    note_id = check_id(query_value(query, "noteId"), "noteId")
    if note_id is not None:
        note = None if "\x00" in note_id else await db.get(pool, workspace_id, note_id)
        if note is None:
            raise NotFound(f"Note not found: {note_id}")
        return json_response({"note": note.wire()})
    note_type = _note_type(query_value(query, "type"))
    session_id = query_value(query, "sessionId") or None
    group_by = query_value(query, "groupBy")
    if group_by is not None:
        if group_by != "session":
            raise BadRequest(f"Invalid groupBy: {group_by}")
        rows = await db.list_with_session_names(
            pool, workspace_id, session_id=session_id, note_type=note_type
        )
        return json_response({"groups": _groups(rows)})
    notes = await db.list_notes(
        pool, workspace_id, session_id=session_id, note_type=note_type
    )
    return json_response({"notes": [n.wire() for n in notes]})


@api(
    "Create a note (201), or update it when noteId names an existing one (200)",
    "notes",
    wrap("note", Note),
    (400, 404, 413, 415, 503),
    (),
    NoteWrite,
    status=201,
    also={200: wrap("note", Note)},
)
async def post_note(request: web.Request) -> web.Response:
    """Create (201), or update (200) when `noteId` names an existing note of the workspace."""
    body = validate_body(NoteWrite, await read_json_body(request))
    if not body.workspace_id:
        raise BadRequest("workspaceId is required")
    check_id(body.note_id, "noteId")
    check_id(body.session_id, "sessionId")
    require_workspace(request, body.workspace_id)
    metadata = body.metadata
    note_type = _note_type(body.type or (metadata.type if metadata else None))
    if body.source is not None and body.source not in NOTE_SOURCES:
        raise BadRequest(f"Invalid source: {body.source}")
    # a blank title counts as none: "Untitled" on create, unchanged on update
    title = (
        clean_title(body.title)
        if body.title is not None and body.title.strip()
        else None
    )
    values = db.NoteValues(
        title=title,
        content=body.content,
        session_id=body.session_id,
        type=note_type,
        metadata=(
            metadata.model_dump(by_alias=True, exclude_none=True, exclude={"type"})
            if metadata is not None
            else None
        ),
        source=body.source,
    )
    note_id = body.note_id or str(uuid.uuid4())
    pool = request.app[PG_POOL]
    await check_session_ref(pool, body.workspace_id, body.session_id)
    try:
        note, created = await db.upsert(pool, body.workspace_id, note_id, values)
    except asyncpg.ForeignKeyViolationError as err:
        raise UnknownWorkspace(body.workspace_id) from err
    await _publish(
        request,
        "note:created" if created else "note:updated",
        note.workspace_id,
        note.id,
        body.source or "user",
        note,
    )
    return json_response({"note": note.wire()}, status=201 if created else 200)


@api(
    "Delete one note",
    "notes",
    deleted("noteId"),
    (400, 404, 503),
    (
        WS_REQ,
        Param("noteId", required=True),
        Param("source", schema={"enum": ["agent", "user", "system"]}),
    ),
)
async def delete_note(request: web.Request) -> web.Response:
    query = request.query
    pool = request.app[PG_POOL]
    workspace_id = await ensure_workspace(pool, query_value(query, "workspaceId"))
    note_id = check_id(query_value(query, "noteId"), "noteId")
    if not note_id:
        raise BadRequest("noteId is required")
    source = query_value(query, "source") or "user"
    if source not in NOTE_SOURCES:
        raise BadRequest(f"Invalid source: {source}")
    if "\x00" in note_id or not await db.delete(pool, workspace_id, note_id):
        raise NotFound(f"Note not found: {note_id}")
    await _publish(request, "note:deleted", workspace_id, note_id, source, None)
    return json_response({"deleted": True, "noteId": note_id})


@api(
    "SSE of note:created/updated/deleted messages of a workspace",
    "notes",
    SSE,
    (400, 404),
    (WS_REQ,),
)
async def note_events(request: web.Request) -> web.StreamResponse:
    return await live.workspace_stream(request, Channels.workspace_notes)
