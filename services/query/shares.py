"""Share links: `/api/sessions/{id}/shares` and the read-only page `/s/<token>`.

A share token reads one session (services/common/auth.py decides what it may reach). Only
its sha256 is stored; the token itself is in the create answer and nowhere else. Revoking
publishes on Redis so every process forgets it and ends the streams opened with it.
"""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from services.common.apidoc import Param, api, deleted, list_of
from services.common.http import (
    error_response,
    json_response,
    postgres_calls,
    read_json_body,
)
from services.common.keys import AUTH, PG_POOL, SETTINGS
from services.common.shares import publish_revocation
from services.query.apiparams import SID
from services.query.keys import SHARE_PAGE_HTML
from services.query.sessions import NO_STORE, _require_session, session_id_of
from shared.db import shares as shares_db
from shared.errors import NotFound
from shared.jsonutil import iso
from shared.models.share import ShareCreate, ShareLink
from shared.models.validation import validate_body

SHARE_PAGE = "/s/{token}"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
PAGE_HEADERS = {
    **NO_STORE,
    # the token is in the path: never send it on to another site, never index it
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
}


def _wire(share: shares_db.Share) -> dict[str, object]:
    return ShareLink(
        share_id=str(share.share_id),
        session_id=str(share.session_id),
        created_at=iso(share.created_at),
        expires_at=iso(share.expires_at) if share.expires_at else None,
    ).wire()


def share_url(request: web.Request, token: str) -> str:
    """PUBLIC_URL when set; else the origin the client used (through a proxy's
    X-Forwarded-Proto/-Host); a relative path when the Host header is not a host."""
    path = "/s/" + quote(token, safe="")
    public = request.app[SETTINGS].public_url
    if public:
        return public.rstrip("/") + path
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).lower()
    if proto not in ("http", "https"):
        proto = request.scheme
    host = request.headers.get("X-Forwarded-Host") or request.host
    if not _HOST.fullmatch(host):
        return path
    return f"{proto}://{host}{path}"


@api(
    "Create a share link; its token and url are shown only in this answer",
    "sessions",
    {
        "type": "object",
        "required": ["share", "token", "url"],
        "properties": {
            "share": ShareLink,
            "token": {"type": "string"},
            "url": {"type": "string", "description": "The read-only page /s/<token>"},
        },
    },
    (400, 404, 413, 415, 503),
    (SID,),
    ShareCreate,
    status=201,
)
async def create_share(request: web.Request) -> web.Response:
    session_id = session_id_of(request)
    await _require_session(request, session_id)
    body = validate_body(ShareCreate, await read_json_body(request, required=False))
    token = shares_db.new_token()
    with postgres_calls():
        share = await shares_db.create(
            request.app[PG_POOL], session_id, token, body.expires_in_seconds
        )
    return json_response(
        {"share": _wire(share), "token": token, "url": share_url(request, token)},
        status=201,
        headers=NO_STORE,
    )


@api(
    "The session's share links (never their tokens)",
    "sessions",
    list_of("shares", ShareLink),
    (404, 503),
    (SID,),
)
async def list_shares(request: web.Request) -> web.Response:
    session_id = session_id_of(request)
    await _require_session(request, session_id)
    with postgres_calls():
        shares = await shares_db.list_for(request.app[PG_POOL], session_id)
    return json_response({"shares": [_wire(s) for s in shares]}, headers=NO_STORE)


@api(
    "Revoke a share link: its token answers 401 and its open streams end",
    "sessions",
    deleted(),
    (404, 503),
    (SID, Param("share_id", "path", required=True, description="Share id")),
)
async def delete_share(request: web.Request) -> web.Response:
    """Revoke: the row goes, then every process forgets it and ends its streams."""
    session_id = session_id_of(request)
    await _require_session(request, session_id)
    raw = request.match_info["share_id"]
    try:
        share_id = uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"Share not found: {raw}") from None
    with postgres_calls():
        deleted = await shares_db.delete(request.app[PG_POOL], session_id, share_id)
    if not deleted:
        raise NotFound(f"Share not found: {raw}")
    await publish_revocation(request.app, str(share_id), str(session_id))
    return json_response({"deleted": True})


@api(
    "A shared session, read-only and live (404 page when the link is not valid)",
    "meta",
    "text/html",
    (),
    (Param("token", "path", required=True, description="Share token"),),
)
async def share_page(request: web.Request) -> web.Response:
    """The dashboard in its read-only mode, for the one session the token reads."""
    token = request.match_info["token"]
    grant = None
    if shares_db.is_share_token(token):
        with postgres_calls():
            grant = await request.app[AUTH].store.lookup_share(token)
    if grant is None or grant.expired(datetime.now(UTC)):
        # an error is JSON here like everywhere else (the asset 404 too)
        resp = error_response(404, "Share link not found, expired or revoked")
        resp.headers.update(PAGE_HEADERS)
        return resp
    attrs = f'class="share" data-share-session="{html.escape(str(grant.session_id))}"'
    return web.Response(
        text=request.app[SHARE_PAGE_HTML].replace("<body>", f"<body {attrs}>", 1),
        content_type="text/html",
        charset="utf-8",
        headers=PAGE_HEADERS,
    )
