"""Bearer-token auth, workspace scope and the per-token rate limit.

Auth is on when AUTH_TOKENS is set, or once any token was ever created in api_tokens (a flag
row the first one sets; revoking every token keeps auth on), or with AUTH=on; only AUTH=off
turns it off. A process never switches it off by itself, and says at warning level whenever
it changes. While on, every
`/api/*` route needs `Authorization: Bearer <token>` (or `?access_token=`, for EventSource);
`/healthz`, `/readyz`, `/metrics` and the dashboard page and assets stay open. A token is
scoped to workspaces: whatever names another workspace in the URL (a `workspaceId`, a
session, task or workspace id) is refused here with 403; handlers check workspaces that
come in bodies and filter lists with `allowed_workspaces(request)`.

AUTH_TOKENS tokens are checked in memory. Table lookups (and "was a token ever created?") are
cached for AUTH_CACHE_TTL seconds, so a revoke takes effect within that window and a
request costs no query while the entry is fresh.

A share token (`routa_share_…`, from session_shares) reads one session and nothing else,
whether auth is on or off: `share_allows` is the one rule. Its lookups are cached the same
way, and a revocation heard over Redis (services/common/shares.py) drops the entry at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.common import rpcjson
from services.common.authstate import (
    PG_ERRORS,
    AuthState,
    Scope,
    TokenStore,
    Unknown,
    parse_auth_tokens,
)
from services.common.http import MAX_BODY_BYTES, error_response
from services.common.keys import AUTH, PG_POOL, SETTINGS
from shared.db import sessions as sessions_db
from shared.db import shares as shares_db
from shared.db import tokens as tokens_db
from shared.errors import DependencyDown, Forbidden

logger = logging.getLogger(__name__)

FORBIDDEN = "Forbidden: outside this token's workspaces"
SHARE_FORBIDDEN = "Forbidden: a share link only reads its own session"
# What a share token may GET (route templates, so a route added later is covered by name);
# plus `GET /api/acp?sessionId=` (the event stream and its probe) for the same session.
SHARE_ROUTES = frozenset(
    {
        "/api/sessions/{session_id}",
        "/api/sessions/{session_id}/history",
        "/api/sessions/{session_id}/context",
        "/api/sessions/{session_id}/export",
    }
)
OPEN_PREFIX = "/api/"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a short, non-secret key of the token (rate limit, logs) and its scope."""

    key: str
    workspaces: Scope
    # set for a share token: the one session it reads
    share: shares_db.Grant | None = None


# Set on every /api/* request that passes, None when anonymous: a key that is there costs
# no KeyError inside `request.get` (a warm list paid one per request)
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal")


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """After Postgres: read AUTH, AUTH_TOKENS and the table once, and say whether auth is on."""
    settings = app[SETTINGS]
    env = parse_auth_tokens(settings.auth_tokens)
    store = TokenStore(env, app[PG_POOL], settings.auth_cache_ttl, settings.auth)
    on = await store.refresh_table_state(at_startup=True)
    app[AUTH] = state = AuthState(
        store, app[PG_POOL], settings.rate_limit, settings.rate_limit_burst
    )
    limiter = state.limiter(authed=on)
    rate = (
        f"{limiter.rate:g}/s per token (burst {limiter.burst:g})" if limiter else "off"
    )
    if store.mode == "off":
        logger.warning(
            "auth OFF (AUTH=off): every /api/* route is open to anyone%s; rate limit %s",
            ", AUTH_TOKENS and api_tokens are ignored" if env else "",
            rate,
        )
    elif on:
        why = (
            "AUTH=on"
            if store.mode == "on"
            else "AUTH_TOKENS is set"
            if env
            else "api_tokens has held a token"
        )
        logger.info(
            "auth on (%s): %d token(s) from AUTH_TOKENS, table tokens checked with a "
            "%gs cache; rate limit %s",
            why,
            len(env),
            settings.auth_cache_ttl,
            rate,
        )
    else:
        logger.warning(
            "auth off: AUTH_TOKENS unset and no token ever created in api_tokens, every "
            "/api/* route is open; it turns on for good within %gs of the first "
            "`routa-tokens create` (AUTH=on forces it on now); rate limit %s",
            settings.auth_cache_ttl,
            rate,
        )
    yield


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:  # most requests of an open deployment have none
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query.get("access_token") or None


def _unauthorized(message: str) -> web.Response:
    resp = error_response(401, message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="routa"'
    return resp


async def check_request(request: web.Request) -> web.StreamResponse | None:
    """401 / 429 / 403 / 413 for /api/* before the handler runs; None lets it through.

    Called by the one middleware of the process (services/common/middleware.py).
    """
    state = request.app.get(AUTH)
    if state is None or not request.path.startswith(OPEN_PREFIX):
        return None
    store = state.store
    # fast path while the cached answer is fresh: no coroutine per request
    on = store.enabled_now()
    if on is None:
        on = await store.enabled()
    principal: Principal | None = None
    token = _bearer(request)
    if token is not None and shares_db.is_share_token(token):
        # a share token is one session's reader, with auth on or off
        grant = await store.lookup_share(token)
        if grant is None:
            return _unauthorized("Invalid or revoked share token")
        if grant.expired(datetime.now(UTC)):
            return _unauthorized("Share token expired")
        principal = Principal(
            "share:" + grant.share_id, frozenset({grant.workspace_id}), grant
        )
    elif on:
        if token is None:
            return _unauthorized("Missing bearer token (Authorization: Bearer <token>)")
        scope = await store.lookup(token)
        if isinstance(scope, Unknown):
            return _unauthorized("Invalid or revoked token")
        principal = Principal(tokens_db.hash_token(token)[:16], scope)
    request[PRINCIPAL] = principal
    limiter = state.limiter(authed=principal is not None)
    if limiter is not None:
        key = principal.key if principal else f"addr:{request.remote}"
        wait = limiter.take(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            resp = error_response(
                429,
                f"Rate limit exceeded ({limiter.rate:g} requests/s); retry after {retry}s",
            )
            resp.headers["Retry-After"] = str(retry)
            return resp
    if principal is not None and principal.share is not None:
        if not share_allows(request, principal.share):
            raise Forbidden(SHARE_FORBIDDEN)
    elif principal is not None and principal.workspaces is not None:
        await _check_url_scope(request, state, principal.workspaces)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error_response(413, "Request body too large (limit 1 MiB)")
    return None


async def _check_url_scope(
    request: web.Request, state: AuthState, allowed: frozenset[str]
) -> None:
    """Workspaces named by the URL: a query workspaceId, or the owner of a path id."""
    workspace = request.query.get("workspaceId")
    if workspace and workspace not in allowed:
        raise Forbidden(FORBIDDEN)
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource else ""
    named: str | None = None
    try:
        if "session_id" in info:
            named = await state.session_workspace(info["session_id"])
        elif route.startswith("/api/workspaces/{id}"):
            named = info["id"]
        elif route.startswith("/api/tasks/{id}") and route != "/api/tasks/ready":
            named = await state.task_workspace(info["id"])
        elif route == "/api/tasks" and request.query.get("taskId"):
            named = await state.task_workspace(request.query["taskId"])
        elif route == "/api/acp" and request.method == "GET":
            session_id = request.query.get("sessionId")
            named = await state.session_workspace(session_id) if session_id else None
    except PG_ERRORS as err:
        raise DependencyDown(f"Postgres unavailable: {err.__class__.__name__}") from err
    # an unknown id passes: the handler answers 404 as it would for anyone
    if named is not None and named not in allowed:
        raise Forbidden(FORBIDDEN)


def share_allows(request: web.Request, grant: shares_db.Grant) -> bool:
    """The one rule for share tokens: GET (or HEAD) of its own session's read routes."""
    if request.method not in ("GET", "HEAD"):
        return False
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource else ""
    if route in SHARE_ROUTES:
        named = info.get("session_id")
    elif route == "/api/acp":
        named = request.query.get("sessionId")
    else:
        return False
    return sessions_db.parse_session_id(named) == grant.session_id


def share_of(request: web.Request) -> shares_db.Grant | None:
    """The share grant the request came with, if it came with a share token."""
    principal = request.get(PRINCIPAL)
    return principal.share if principal is not None else None


def allowed_workspaces(request: web.Request) -> Scope:
    """The caller's workspaces, or None when it may use all (or auth is off)."""
    principal = request.get(PRINCIPAL)
    return principal.workspaces if principal is not None else None


def require_workspace(request: web.Request, workspace_id: str | None) -> None:
    """403 when a workspace named in a body is outside the caller's scope."""
    allowed = allowed_workspaces(request)
    if allowed is not None and (workspace_id is None or workspace_id not in allowed):
        raise Forbidden(FORBIDDEN)


async def check_rpc_scope(request: web.Request, raw: bytes) -> None:
    """HTTP 403 before any member of a JSON-RPC call or batch runs outside scope."""
    allowed = allowed_workspaces(request)
    if allowed is None:
        return
    try:
        payload: Any = rpcjson.loads(
            raw
        )  # the envelope's parser: what it runs, we check
    except ValueError:
        return  # the envelope answers -32700
    members = payload if isinstance(payload, list) else [payload]
    state = request.app[AUTH]
    for member in members:
        params = member.get("params") if isinstance(member, dict) else None
        if not isinstance(params, dict):
            continue
        workspace = params.get("workspaceId")
        if isinstance(workspace, str) and workspace.strip() not in allowed:
            raise Forbidden(FORBIDDEN)
        for key in ("sessionId", "parentSessionId"):
            session_id = params.get(key)
            if not isinstance(session_id, str):
                continue
            try:
                named = await state.session_workspace(session_id)
            except PG_ERRORS as err:
                raise DependencyDown(
                    f"Postgres unavailable: {err.__class__.__name__}"
                ) from err
            if named is not None and named not in allowed:
                raise Forbidden(FORBIDDEN)


def filter_allowed(request: web.Request, items: list[Any], key: str) -> list[Any]:
    """Keep the wire objects whose `key` is one of the caller's workspaces."""
    allowed = allowed_workspaces(request)
    if allowed is None:
        return items
    return [i for i in items if i.get(key) in allowed]
