"""/api/workspaces: CRUD, and the delete that takes everything with it."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from redis.exceptions import RedisError

from services.common.apidoc import api, list_of, ref, wrap
from services.common.auth import filter_allowed, require_workspace
from services.common.http import json_response, read_json_body
from services.common.keys import CHANNELS, PG_POOL, REDIS
from services.query.apiparams import WID
from shared.db import workspaces as db
from shared.db.connect import Executor
from shared.errors import BadRequest, Conflict, UnknownWorkspace
from shared.jsonutil import dumps
from shared.lifecycle import session_changed
from shared.models.validation import clean_title, validate_body
from shared.models.workspace import (
    DEFAULT_WORKSPACE_ID,
    WORKSPACE_STATUSES,
    CodebaseIn,
    Workspace,
    WorkspaceCreate,
    WorkspacePatch,
)

logger = logging.getLogger(__name__)


async def ensure_workspace(conn: Executor, workspace_id: str | None) -> str:
    """The workspace id of a request: 400 when missing, 404 when unknown."""
    if not workspace_id:
        raise BadRequest("workspaceId is required")
    # Postgres text cannot hold NUL, so such an id names nothing
    if "\x00" in workspace_id or not await db.exists(conn, workspace_id):
        raise UnknownWorkspace(workspace_id)
    return workspace_id


def _codebases(items: list[CodebaseIn] | None) -> list[db.CodebaseValues] | None:
    if items is None:
        return None
    ids = [c.id for c in items if c.id is not None]
    if len(ids) != len(set(ids)):
        raise BadRequest("Invalid codebases: duplicate codebase id")
    return [db.CodebaseValues(c.id, c.repo_path, c.branch) for c in items]


@api("Every workspace", "workspaces", list_of("workspaces", Workspace), (503,))
async def list_workspaces(request: web.Request) -> web.Response:
    workspaces = await db.list_workspaces(request.app[PG_POOL])
    wire = filter_allowed(request, [w.wire() for w in workspaces], "id")
    return json_response({"workspaces": wire})


@api(
    "Create a workspace",
    "workspaces",
    wrap("workspace", Workspace),
    (400, 409, 413, 415, 503),
    (),
    WorkspaceCreate,
    status=201,
)
async def create_workspace(request: web.Request) -> web.Response:
    body = validate_body(WorkspaceCreate, await read_json_body(request))
    if body.title is None:
        raise BadRequest("title is required")
    title = clean_title(body.title)
    workspace_id = body.id or str(uuid.uuid4())
    # a scoped token may only create a workspace it names and may use
    require_workspace(request, body.id)
    async with request.app[PG_POOL].acquire() as conn:
        try:
            workspace = await db.create(
                conn,
                workspace_id,
                title,
                _codebases(body.codebases) or [],
                max_concurrent_turns=body.max_concurrent_turns,
            )
        except db.DuplicateWorkspace as err:
            raise Conflict(f"Workspace already exists: {workspace_id}") from err
    return json_response({"workspace": workspace.wire()}, status=201)


@api("One workspace", "workspaces", wrap("workspace", Workspace), (404, 503), (WID,))
async def get_workspace(request: web.Request) -> web.Response:
    workspace_id = request.match_info["id"]
    workspace = (
        None
        if "\x00" in workspace_id
        else await db.get(request.app[PG_POOL], workspace_id)
    )
    if workspace is None:
        raise UnknownWorkspace(workspace_id)
    return json_response({"workspace": workspace.wire()})


@api(
    "Update a workspace's title, status or codebases",
    "workspaces",
    wrap("workspace", Workspace),
    (400, 404, 413, 415, 503),
    (WID,),
    WorkspacePatch,
)
async def patch_workspace(request: web.Request) -> web.Response:
    workspace_id = request.match_info["id"]
    if "\x00" in workspace_id:
        raise UnknownWorkspace(workspace_id)
    body = validate_body(WorkspacePatch, await read_json_body(request))
    title = clean_title(body.title) if body.title is not None else None
    if body.status is not None and body.status not in WORKSPACE_STATUSES:
        raise BadRequest(f"Invalid status: {body.status}")
    async with request.app[PG_POOL].acquire() as conn:
        workspace = await db.update(
            conn,
            workspace_id,
            title=title,
            status=body.status,
            codebases=_codebases(body.codebases),
            max_concurrent_turns=(
                (body.max_concurrent_turns,)
                if "max_concurrent_turns" in body.model_fields_set
                else None
            ),
        )
    if workspace is None:
        raise UnknownWorkspace(workspace_id)
    return json_response({"workspace": workspace.wire()})


@api(
    "Delete a workspace with its sessions, events, notes and tasks (default: 409)",
    "workspaces",
    ref("Ok"),
    (404, 409, 503),
    (WID,),
)
async def delete_workspace(request: web.Request) -> web.Response:
    """Rows go in one transaction (cascade); then owners are told to stop, lists are told."""
    workspace_id = request.match_info["id"]
    if workspace_id == DEFAULT_WORKSPACE_ID:
        raise Conflict("The default workspace cannot be deleted")
    if "\x00" in workspace_id:
        raise UnknownWorkspace(workspace_id)
    async with request.app[PG_POOL].acquire() as conn:
        deleted = await db.delete(conn, workspace_id)
    if deleted is None:
        raise UnknownWorkspace(workspace_id)
    redis, channels = request.app[REDIS], request.app[CHANNELS]
    for session in deleted:
        if session.owner_instance_id is not None:
            try:
                await redis.publish(
                    channels.gateway_control(session.owner_instance_id),
                    dumps(
                        {
                            "type": "stop",
                            "sessionId": session.session_id,
                            "reason": "deleted",
                        }
                    ),
                )
            except (RedisError, OSError) as err:
                # the rows are gone already; the owner is left to notice on its own
                logger.warning(
                    "stop for session %s not sent: %s", session.session_id, err
                )
        await session_changed(
            redis, channels, "session:deleted", session.session_id, workspace_id, {}
        )
    return json_response({"ok": True})
