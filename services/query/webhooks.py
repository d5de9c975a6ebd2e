"""/api/workspaces/{id}/webhooks: register, list and delete webhooks, read their deliveries.

Deliveries are enqueued by Postgres triggers (migration 0009) and sent by the worker of
services/query/webhook_delivery.py; these handlers only manage the subscriptions.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid

from aiohttp import web

from services.common.apidoc import api, deleted, list_of
from services.common.http import json_response, read_json_body
from services.common.keys import PG_POOL
from services.query import webhook_delivery
from services.query.apiparams import HOOK, LIMIT, WID
from services.query.keys import ALLOW
from services.query.session_views import parse_limit
from services.query.webhook_targets import TargetRefused, check_target
from shared.db import webhooks as db
from shared.db import workspaces as workspaces_db
from shared.errors import BadRequest, NotFound, UnknownWorkspace
from shared.models.validation import validate_body
from shared.models.webhook import Webhook, WebhookCreate, WebhookDelivery

MIN_KEY_BYTES = 16  # a shorter HMAC key is guessable; generated ones have 24
GENERATED_KEY_BYTES = 24
DELIVERIES_LIMIT = 100


def generate_secret() -> str:
    return webhook_delivery.SECRET_PREFIX + base64.b64encode(
        secrets.token_bytes(GENERATED_KEY_BYTES)
    ).decode("ascii")


def check_secret(secret: str) -> None:
    """400 naming `secret` when it cannot sign: bad base64 after `whsec_`, or too short."""
    try:
        key = webhook_delivery.signing_key(secret)
    except (binascii.Error, ValueError) as err:
        raise BadRequest("Invalid secret: whsec_ must be followed by base64") from err
    if len(key) < MIN_KEY_BYTES:
        raise BadRequest(
            f"Invalid secret: at least {MIN_KEY_BYTES} bytes of key needed"
        )


async def _workspace(request: web.Request) -> str:
    workspace_id = request.match_info["id"]
    if "\x00" in workspace_id or not await workspaces_db.exists(
        request.app[PG_POOL], workspace_id
    ):
        raise UnknownWorkspace(workspace_id)
    return workspace_id


async def _webhook_id(request: web.Request, workspace_id: str) -> uuid.UUID:
    """The path's webhook id, 404 unless it is a webhook of this workspace."""
    raw = request.match_info["webhook_id"]
    try:
        webhook_id = uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"Webhook not found: {raw}") from None
    if not await db.exists(request.app[PG_POOL], workspace_id, webhook_id):
        raise NotFound(f"Webhook not found: {raw}")
    return webhook_id


@api(
    "Register a webhook; the signing secret is in this reply only",
    "webhooks",
    {
        "type": "object",
        "required": ["webhook", "secret"],
        "properties": {"webhook": Webhook, "secret": {"type": "string"}},
    },
    (400, 404, 413, 415, 503),
    (WID,),
    WebhookCreate,
    status=201,
)
async def create_webhook(request: web.Request) -> web.Response:
    workspace_id = await _workspace(request)
    body = validate_body(WebhookCreate, await read_json_body(request))
    try:
        await check_target(request.app[ALLOW], body.url)
    except TargetRefused as err:
        raise BadRequest(f"Invalid url: {err}") from err
    if body.secret is not None:
        check_secret(body.secret)
    secret = body.secret or generate_secret()
    events = list(dict.fromkeys(body.events))  # a repeated name counts once
    webhook = await db.create(
        request.app[PG_POOL], workspace_id, body.url, events, secret
    )
    return json_response({"webhook": webhook.wire(), "secret": secret}, status=201)


@api(
    "The workspace's webhooks, oldest first (no secrets)",
    "webhooks",
    list_of("webhooks", Webhook),
    (404, 503),
    (WID,),
)
async def list_webhooks(request: web.Request) -> web.Response:
    workspace_id = await _workspace(request)
    webhooks = await db.list_webhooks(request.app[PG_POOL], workspace_id)
    return json_response({"webhooks": [w.wire() for w in webhooks]})


@api(
    "Delete a webhook and its deliveries",
    "webhooks",
    deleted(),
    (404, 503),
    (WID, HOOK),
)
async def delete_webhook(request: web.Request) -> web.Response:
    workspace_id = await _workspace(request)
    webhook_id = await _webhook_id(request, workspace_id)
    if not await db.delete(request.app[PG_POOL], workspace_id, webhook_id):
        raise NotFound(f"Webhook not found: {webhook_id}")
    return json_response({"deleted": True})


@api(
    "A webhook's deliveries, newest first",
    "webhooks",
    list_of("deliveries", WebhookDelivery),
    (400, 404, 503),
    (WID, HOOK, LIMIT),
)
async def list_deliveries(request: web.Request) -> web.Response:
    workspace_id = await _workspace(request)
    limit = parse_limit(request.query.get("limit"), default=DELIVERIES_LIMIT)
    assert limit is not None
    webhook_id = await _webhook_id(request, workspace_id)
    deliveries = await db.deliveries(request.app[PG_POOL], webhook_id, limit)
    return json_response({"deliveries": [d.wire() for d in deliveries]})
