"""Parameters several query routes share, as their `@api` docs name them."""

from __future__ import annotations

from services.common.apidoc import Param

WS = Param("workspaceId", description="Workspace id")
WS_REQ = Param("workspaceId", required=True, description="Workspace id (required)")
SID = Param("session_id", "path", required=True, description="Session id (UUID)")
TID = Param("id", "path", required=True, description="Task id")
WID = Param("id", "path", required=True, description="Workspace id")
LIMIT = Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})
HOOK = Param("webhook_id", "path", required=True, description="Webhook id (UUID)")
