"""Pure logic of the session routes: query parsing, name rules, history consolidation, context files."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import BadRequest
from shared.models.limits import parse_uint
from shared.models.session import NAME_MAX, SESSION_STATUSES
from shared.models.validation import query_value

MAX_LIMIT = 1000
_UUID_NONE = uuid.UUID(int=0)


def _param(query: Mapping[str, str], name: str) -> str | None:
    """A query value, or None when absent or empty (an empty filter filters nothing).

    A NUL is a 400 naming the parameter (Postgres text cannot hold it).
    """
    value = query_value(query, name)
    return value if value else None


def parse_limit(value: str | None, *, default: int | None) -> int | None:
    if value is None:
        return default
    limit = parse_uint(value, "limit", MAX_LIMIT)
    if limit < 1:
        raise BadRequest(f"Invalid limit: {value}")
    return limit


@dataclass(frozen=True, slots=True)
class ListQuery:
    workspace_id: str | None
    parent_session_id: uuid.UUID | None
    status: str | None
    limit: int | None
    # a parentSessionId that cannot be one of our ids: the answer is an empty list
    matches_nothing: bool = False

    @property
    def cache_key(self) -> str:
        """One key per distinct answer, whatever the spelling of the request."""
        parent = str(self.parent_session_id) if self.parent_session_id else ""
        if self.matches_nothing:
            parent = "none"
        return (
            f"v1|ws={self.workspace_id or ''}|parent={parent}"
            f"|status={self.status or ''}|limit={self.limit or ''}"
        )


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    """Filters of GET /api/sessions; unknown parameters are ignored."""
    status = _param(query, "status")
    if status is not None:
        if status.lower() not in SESSION_STATUSES:
            raise BadRequest(f"Invalid status: {status}")
        status = status.lower()
    limit = parse_limit(_param(query, "limit"), default=None)
    parent_raw = _param(query, "parentSessionId")
    parent: uuid.UUID | None = None
    matches_nothing = False
    if parent_raw is not None:
        try:
            parent = uuid.UUID(parent_raw)
        except ValueError:
            # like the notes/tasks sessionId filter: any string, matching nothing
            matches_nothing = True
            parent = _UUID_NONE
    return ListQuery(
        workspace_id=_param(query, "workspaceId"),
        parent_session_id=parent,
        status=status,
        limit=limit,
        matches_nothing=matches_nothing,
    )


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    after: int
    limit: int
    consolidated: bool


def parse_history_query(query: Mapping[str, str]) -> HistoryQuery:
    """`after` (^[0-9]+$), `limit` 1-1000 (default 1000), `consolidated` true|false."""
    after_raw = _param(query, "after")
    # beyond a bigint (and beyond int()'s 4,300 digits) is a 400, not a 500
    after = parse_uint(after_raw, "after") if after_raw is not None else 0
    limit = parse_limit(_param(query, "limit"), default=MAX_LIMIT)
    assert limit is not None
    consolidated_raw = _param(query, "consolidated")
    if consolidated_raw is not None and consolidated_raw not in ("true", "false"):
        raise BadRequest(f"Invalid consolidated: {consolidated_raw}")
    return HistoryQuery(after, limit, consolidated_raw == "true")


def clean_name(value: Any) -> str:
    """A session name: a string of 1-200 code points after trimming, else 400."""
    if not isinstance(value, str):
        raise BadRequest("Invalid name")
    name = value.strip()
    # Postgres text cannot hold NUL: refuse it here rather than fail the UPDATE (500)
    if not name or len(name) > NAME_MAX or "\x00" in name:
        raise BadRequest("Invalid name")
    return name


def fork_name(source_name: str | None, source_id: str) -> str:
    """`Fork of <name>` (or of the id), cut to the 200 code points a name may have."""
    return f"Fork of {source_name or source_id}"[:NAME_MAX]


def _chunk_text(event: Mapping[str, Any]) -> tuple[bool, Any, str]:
    """(is a mergeable text chunk, its messageId or None, its text)."""
    update = event.get("update")
    if not isinstance(update, dict) or update.get("sessionUpdate") != (
        "agent_message_chunk"
    ):
        return False, None, ""
    content = update.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("text"), str):
        return False, None, ""
    if content.get("type", "text") != "text":
        return False, None, ""
    return True, update.get("messageId"), content["text"]


def consolidate(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge each run of adjacent text `agent_message_chunk`s with the same messageId (or
    both without one) into one `agent_message` carrying the last chunk's eventId.
    A run of one chunk becomes an `agent_message` too, as Routa does.
    """
    out: list[dict[str, Any]] = []
    run: list[str] = []
    run_last: dict[str, Any] | None = None
    run_message_id: Any = None

    def flush() -> None:
        nonlocal run_last
        if run_last is None:
            return
        update: dict[str, Any] = {"sessionUpdate": "agent_message"}
        if run_message_id is not None:
            update["messageId"] = run_message_id
        update["content"] = {"type": "text", "text": "".join(run)}
        merged = {k: v for k, v in run_last.items() if k != "update"}
        merged["update"] = update
        out.append(merged)
        run.clear()
        run_last = None

    for event in events:
        is_chunk, message_id, text = _chunk_text(event)
        if not is_chunk:
            flush()
            out.append(event)
            continue
        if run_last is not None and message_id != run_message_id:
            flush()
        run_message_id = message_id
        run.append(text)
        run_last = event
    flush()
    return out


def touched_files(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Paths of tool calls (locations[].path, rawInput.path), newest first, each once."""
    seen: set[str] = set()
    files: list[str] = []
    for event in reversed(list(events)):
        update = event.get("update")
        if not isinstance(update, dict) or update.get("sessionUpdate") not in (
            "tool_call",
            "tool_call_update",
        ):
            continue
        paths: list[str] = []
        locations = update.get("locations")
        if isinstance(locations, list):
            paths.extend(
                loc["path"]
                for loc in locations
                if isinstance(loc, dict) and isinstance(loc.get("path"), str)
            )
        raw_input = update.get("rawInput")
        if isinstance(raw_input, dict) and isinstance(raw_input.get("path"), str):
            paths.append(raw_input["path"])
        for path in paths:
            if path and path not in seen:
                seen.add(path)
                files.append(path)
    return files
