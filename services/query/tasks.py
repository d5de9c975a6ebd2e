"""/api/tasks: tasks of a workspace and their kanban status."""

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
from services.query.apiparams import TID, WS, WS_REQ
from services.query.sessions import check_session_ref
from services.query.workspaces import ensure_workspace
from shared.channels import Channels
from shared.db import tasks as db
from shared.errors import BadRequest, Conflict, NotFound, UnknownWorkspace
from shared.jsonutil import dumps, now_iso
from shared.models.limits import check_id
from shared.models.task import (
    COLUMN_TO_STATUS,
    STATUS_TO_COLUMN,
    TASK_PRIORITIES,
    TASK_STATUSES,
    Task,
    TaskCreate,
    TaskFields,
    TaskStatusChange,
)
from shared.models.validation import clean_title, query_value, validate_body

logger = logging.getLogger(__name__)


def parse_status(value: str) -> str:
    """Case-insensitive: `in_progress` -> IN_PROGRESS; anything else is 400 naming the value."""
    status = value.strip().upper()
    if status not in TASK_STATUSES:
        raise BadRequest(f"Invalid status: {value}")
    return status


def _not_found(task_id: str) -> NotFound:
    return NotFound(f"Task not found: {task_id}")


def _task_id(task_id: str, field: str = "id") -> str:
    """Postgres text cannot hold NUL: such an id names no task; a long one is a 400."""
    check_id(task_id, field)
    if "\x00" in task_id:
        raise _not_found(task_id)
    return task_id


def apply_fields(values: db.TaskValues, fields: TaskFields) -> db.TaskValues:
    """Merge the fields a client sent into `values`; status and columnId move together."""
    sent = fields.model_fields_set
    if fields.title is not None:
        values.title = clean_title(fields.title)
    elif "title" in sent:
        raise BadRequest("Invalid title: must be 1-200 characters after trimming")
    if fields.objective is not None:
        if not fields.objective.strip():
            raise BadRequest("Invalid objective: must not be empty")
        values.objective = fields.objective
    elif "objective" in sent:
        raise BadRequest("Invalid objective: must not be empty")
    if "priority" in sent:
        if fields.priority is not None and fields.priority not in TASK_PRIORITIES:
            raise BadRequest(f"Invalid priority: {fields.priority}")
        values.priority = fields.priority
    # optional references: null clears them
    if "session_id" in sent:
        values.session_id = check_id(fields.session_id, "sessionId")
    if "assigned_to" in sent:
        values.assigned_to = fields.assigned_to
    for name in (
        "labels",
        "dependencies",
        "acceptance_criteria",
        "verification_commands",
        "comments",
    ):
        if name in sent:
            setattr(values, name, list(getattr(fields, name) or []))
    if fields.position is not None:
        values.position = fields.position
    if fields.creation_source is not None:
        values.creation_source = fields.creation_source
    _apply_status(values, fields)
    return values


def _apply_status(values: db.TaskValues, fields: TaskFields) -> None:
    status = parse_status(fields.status) if fields.status is not None else None
    column = fields.column_id
    if column is not None and column not in COLUMN_TO_STATUS:
        raise BadRequest(f"Invalid columnId: {column}")
    if status is not None:
        values.status = status
        # a column sent with the status is kept when it agrees (NEEDS_FIX may sit in dev)
        if column is not None and COLUMN_TO_STATUS[column] == status:
            values.column_id = column
        else:
            values.column_id = STATUS_TO_COLUMN[status]
    elif column is not None:
        values.column_id = column
        values.status = COLUMN_TO_STATUS[column]


async def _publish(
    request: web.Request, kind: str, workspace_id: str, task_id: str, task: Task | None
) -> None:
    """After the commit; a Redis outage never fails the write (Postgres holds it)."""
    message: dict[str, Any] = {
        "type": kind,
        "taskId": task_id,
        "workspaceId": workspace_id,
    }
    if task is not None:
        message["task"] = task.wire()
    message["at"] = now_iso()
    try:
        await request.app[REDIS].publish(
            request.app[CHANNELS].workspace_tasks(workspace_id), dumps(message)
        )
    except (RedisError, OSError) as err:
        logger.warning("task message for %s not published: %s", task_id, err)


@api(
    "Tasks of a workspace",
    "tasks",
    list_of("tasks", Task),
    (400, 404, 503),
    (
        WS_REQ,
        Param("sessionId"),
        Param(
            "status",
            description="Case-insensitive, one of " + ", ".join(TASK_STATUSES),
        ),
        Param("assignedTo"),
    ),
)
async def list_tasks(request: web.Request) -> web.Response:
    query = request.query
    pool = request.app[PG_POOL]
    workspace_id = await ensure_workspace(pool, query_value(query, "workspaceId"))
    status = query_value(query, "status")
    tasks = await db.list_tasks(
        pool,
        workspace_id,
        session_id=query_value(query, "sessionId") or None,
        status=parse_status(status) if status is not None else None,
        assigned_to=query_value(query, "assignedTo") or None,
    )
    return json_response({"tasks": [t.wire() for t in tasks]})


@api(
    "PENDING tasks whose dependencies are all COMPLETED",
    "tasks",
    list_of("tasks", Task),
    (400, 404, 503),
    (WS_REQ,),
)
async def ready_tasks(request: web.Request) -> web.Response:
    pool = request.app[PG_POOL]
    workspace_id = await ensure_workspace(
        pool, query_value(request.query, "workspaceId")
    )
    tasks = await db.ready(pool, workspace_id)
    return json_response({"tasks": [t.wire() for t in tasks]})


@api(
    "Create a task (title, objective, workspaceId required, checked in that order)",
    "tasks",
    wrap("task", Task),
    (400, 404, 409, 413, 415, 503),
    (),
    TaskCreate,
    status=201,
)
async def create_task(request: web.Request) -> web.Response:
    raw = await read_json_body(request)
    if isinstance(raw, dict):
        # the contract's order: title, objective, workspaceId
        for name in ("title", "objective", "workspaceId"):
            value = raw.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise BadRequest(f"{name} is required")
    body = validate_body(TaskCreate, raw)
    check_id(body.id, "id")
    assert body.title is not None
    assert body.objective is not None
    assert body.workspace_id is not None
    require_workspace(request, body.workspace_id)
    values = apply_fields(
        db.TaskValues(title=body.title, objective=body.objective), body
    )
    task_id = body.id or str(uuid.uuid4())
    pool = request.app[PG_POOL]
    await check_session_ref(pool, body.workspace_id, values.session_id)
    try:
        task = await db.insert(pool, task_id, body.workspace_id, values)
    except asyncpg.ForeignKeyViolationError as err:
        raise UnknownWorkspace(body.workspace_id) from err
    except asyncpg.UniqueViolationError as err:
        raise Conflict(f"Task already exists: {task_id}") from err
    await _publish(request, "task:created", task.workspace_id, task.id, task)
    return json_response({"task": task.wire()}, status=201)


@api("One task", "tasks", wrap("task", Task), (404, 503), (TID,))
async def get_task(request: web.Request) -> web.Response:
    task_id = _task_id(request.match_info["id"])
    task = await db.get(request.app[PG_POOL], task_id)
    if task is None:
        raise _not_found(task_id)
    return json_response({"task": task.wire()})


async def _update(request: web.Request, task_id: str, fields: TaskFields) -> Task:
    """Read-modify-write under a row lock, so concurrent PATCHes never lose fields."""
    _task_id(task_id)
    async with request.app[PG_POOL].acquire() as conn, conn.transaction():
        current = await db.locked_get(conn, task_id)
        if current is None:
            raise _not_found(task_id)
        values = apply_fields(db.TaskValues.of(current), fields)
        if "session_id" in fields.model_fields_set:
            await check_session_ref(conn, current.workspace_id, values.session_id)
        task = await db.update(conn, task_id, values)
    assert task is not None
    await _publish(request, "task:updated", task.workspace_id, task.id, task)
    return task


@api(
    "Update a task (status sets columnId and vice versa)",
    "tasks",
    wrap("task", Task),
    (400, 404, 413, 415, 503),
    (TID,),
    TaskFields,
)
async def patch_task(request: web.Request) -> web.Response:
    fields = validate_body(TaskFields, await read_json_body(request))
    task = await _update(request, request.match_info["id"], fields)
    return json_response({"task": task.wire()})


@api(
    "Set a task's status (case-insensitive)",
    "tasks",
    wrap("task", Task),
    (400, 404, 413, 415, 503),
    (TID,),
    TaskStatusChange,
)
async def set_task_status(request: web.Request) -> web.Response:
    change = validate_body(TaskStatusChange, await read_json_body(request))
    if change.status is None:
        raise BadRequest("status is required")
    task = await _update(
        request, request.match_info["id"], TaskFields(status=change.status)
    )
    return json_response({"task": task.wire()})


async def _delete(
    request: web.Request, task_id: str, field: str = "id"
) -> web.Response:
    _task_id(task_id, field)
    workspace_id = await db.delete(request.app[PG_POOL], task_id)
    if workspace_id is None:
        raise _not_found(task_id)
    await _publish(request, "task:deleted", workspace_id, task_id, None)
    return json_response({"deleted": True, "taskId": task_id})


@api("Delete a task", "tasks", deleted("taskId"), (404, 503), (TID,))
async def delete_task(request: web.Request) -> web.Response:
    return await _delete(request, request.match_info["id"])


@api(
    "Delete one task by ?taskId= (a workspace-wide delete is refused with 400)",
    "tasks",
    deleted("taskId"),
    (400, 404, 503),
    (Param("taskId", required=True), WS),
)
async def delete_task_by_query(request: web.Request) -> web.Response:
    """`?taskId=` deletes one task; deleting a whole workspace's tasks is refused."""
    task_id = query_value(request.query, "taskId")
    if not task_id:
        if query_value(request.query, "workspaceId"):
            raise BadRequest(
                "taskId is required: deleting every task of a workspace is not allowed"
            )
        raise BadRequest("taskId is required")
    return await _delete(request, task_id, "taskId")


@api(
    "SSE of task:created/updated/deleted messages of a workspace",
    "tasks",
    SSE,
    (400, 404),
    (WS_REQ,),
)
async def task_events(request: web.Request) -> web.StreamResponse:
    """Like the notes stream, for the `task:*` messages."""
    return await live.workspace_stream(request, Channels.workspace_tasks)
