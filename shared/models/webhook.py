"""Webhooks of a workspace and their deliveries, as sent and answered on the wire."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.models.base import WireModel

WebhookEvent = Literal[
    "session_created",
    "session_deleted",
    "turn_complete",
    "permission_requested",
    "session_error",
]
WEBHOOK_EVENTS: tuple[str, ...] = (
    "session_created",
    "session_deleted",
    "turn_complete",
    "permission_requested",
    "session_error",
)
DeliveryStatus = Literal["pending", "delivered", "failed", "dead"]


class WebhookCreate(WireModel):
    url: str = Field(min_length=1, max_length=2048)
    events: list[WebhookEvent] = Field(min_length=1)
    # a plain secret is used as UTF-8 bytes; `whsec_` + base64 is the key itself
    secret: str | None = Field(default=None, min_length=1, max_length=1024)


class Webhook(WireModel):
    id: str
    url: str
    events: list[WebhookEvent]
    created_at: str


class WebhookDelivery(WireModel):
    id: str
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: str | None = None
    created_at: str
