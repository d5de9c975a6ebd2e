"""`GET /api/search`: full-text search over a workspace's user prompts and agent messages.

Parsing, the signed cursor and the snippet's HTML live here; the SQL is in shared/db/search.py.
A cursor is the page's last sort key, bound to its workspace and query and signed with a key
kept in Postgres, so any instance accepts any instance's cursor and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from services.common.apidoc import Param, api, ref
from services.common.http import json_response
from services.common.keys import PG_POOL
from services.query.apiparams import WS_REQ
from services.query.keys import CURSOR_KEY
from services.query.workspaces import ensure_workspace
from shared.db import search as db
from shared.errors import BadRequest
from shared.jsonutil import iso
from shared.models.validation import query_value

MAX_Q = 500
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
CURSOR_VERSION = 1
INVALID_AFTER = "Invalid after: not a cursor this server issued for this search"
_DIGITS = re.compile(r"^[0-9]+$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class SearchQuery:
    workspace_id: str
    q: str
    limit: int
    after: str | None


def parse_search_query(query: Mapping[str, str]) -> SearchQuery:
    """workspaceId and q required (q 1-500 code points), limit 1-100 (default 20), after."""
    workspace_id = query_value(query, "workspaceId")
    if not workspace_id:
        raise BadRequest("workspaceId is required")
    q = query_value(query, "q")
    if not q or not q.strip():
        raise BadRequest("q is required")
    if len(q) > MAX_Q:
        raise BadRequest(f"Invalid q: at most {MAX_Q} characters")
    raw_limit = query_value(query, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit:
        if not _DIGITS.match(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadRequest(f"Invalid limit: {raw_limit}")
        limit = int(raw_limit)
    after = query_value(query, "after") or None
    return SearchQuery(workspace_id, q, limit, after)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: only the one spelling we write (unused low bits of the last character count)."""
    if not _B64URL.match(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical spelling")
    return data


def _query_tag(workspace_id: str, q: str) -> str:
    return hashlib.sha256(f"{workspace_id}\0{q}".encode()).hexdigest()[:16]


def _signature(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:16]


def encode_cursor(key: bytes, query: SearchQuery, position: db.Position) -> str:
    payload = orjson.dumps(
        [
            CURSOR_VERSION,
            _query_tag(query.workspace_id, query.q),
            position.rank,
            position.at.isoformat(),
            str(position.session_id),
            position.first_event_id,
        ]
    )
    return f"{_b64(payload)}.{_b64(_signature(key, payload))}"


def decode_cursor(key: bytes, query: SearchQuery, cursor: str) -> db.Position:
    """The position a cursor names; 400 naming `after` unless we signed it for this search."""
    try:
        payload_b64, _, signature_b64 = cursor.partition(".")
        payload = _unb64(payload_b64)
        if not hmac.compare_digest(_unb64(signature_b64), _signature(key, payload)):
            raise ValueError("bad signature")
        fields: Any = orjson.loads(payload)
        version, tag, rank, at, session_id, first = fields
        if version != CURSOR_VERSION or tag != _query_tag(query.workspace_id, query.q):
            raise ValueError("another search")
        if not isinstance(rank, int | float) or not isinstance(first, int):
            raise ValueError("bad types")
        return db.Position(
            float(rank), datetime.fromisoformat(at), uuid.UUID(session_id), first
        )
    except (ValueError, TypeError, AttributeError, binascii.Error) as err:
        raise BadRequest(INVALID_AFTER) from err


def snippet_html(text: str) -> str:
    """Everything escaped as HTML; only our own marks become <mark>…</mark>."""
    return (
        html.escape(text, quote=True)
        .replace(db.MARK_START, "<mark>")
        .replace(db.MARK_STOP, "</mark>")
    )


def hit_wire(hit: db.Hit) -> dict[str, Any]:
    out: dict[str, Any] = {"sessionId": hit.session_id}
    if hit.session_name is not None:
        out["sessionName"] = hit.session_name
    out["eventId"] = str(hit.event_id)
    out["kind"] = hit.kind
    out["snippet"] = snippet_html(hit.snippet)
    out["at"] = iso(hit.at)
    return out


@api(
    "Full-text search of a workspace's user prompts and agent messages, best first",
    "search",
    ref("SearchResults"),
    (400, 404, 503),
    (
        WS_REQ,
        Param(
            "q",
            required=True,
            schema={"type": "string", "minLength": 1, "maxLength": 500},
            description='Web-search syntax: words (ANDed), "phrases", -exclusions, OR',
        ),
        Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 100}),
        Param("after", description="The `next` cursor of the previous page"),
    ),
)
async def search(request: web.Request) -> web.Response:
    """Ranked hits, one page; `next` when there may be more."""
    query = parse_search_query(request.query)
    pool = request.app[PG_POOL]
    holder = request.app[CURSOR_KEY]
    if holder.key is None:
        holder.key = await db.cursor_key(pool)
    key = holder.key
    after = decode_cursor(key, query, query.after) if query.after else None
    async with pool.acquire() as conn:
        await ensure_workspace(conn, query.workspace_id)
        hits = await db.search(
            conn, query.workspace_id, query.q, query.limit + 1, after
        )
    body: dict[str, Any] = {"results": [hit_wire(h) for h in hits[: query.limit]]}
    if len(hits) > query.limit:
        body["next"] = encode_cursor(key, query, hits[query.limit - 1].position)
    return json_response(body, headers=NO_STORE)
