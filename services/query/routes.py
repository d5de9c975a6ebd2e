"""The routes table of the query service: every route it serves, in matching order.

The OpenAPI document is built from this table and the `@api` doc of each handler
(openapi.py), so a route added here is documented or the build fails.
"""

from __future__ import annotations

from aiohttp import web

from services.common.health import healthz, metrics_handler, readyz
from services.query import (
    dashboard,
    explorer,
    export,
    lifecycle_sse,
    notes,
    openapi,
    search,
    sessions,
    shares,
    tasks,
    webhooks,
    workspaces,
)

SESSION = "/api/sessions/{session_id}"
WORKSPACE = "/api/workspaces/{id}"
WEBHOOK = WORKSPACE + "/webhooks/{webhook_id}"

ROUTES: list[web.RouteDef] = [
    # sessions: the static /events route before /{session_id}
    web.get("/api/sessions", sessions.list_sessions),
    web.get("/api/sessions/events", lifecycle_sse.session_events),
    web.get(SESSION, sessions.get_session),
    web.patch(SESSION, sessions.patch_session),
    web.delete(SESSION, sessions.delete_session),
    web.post(SESSION + "/disconnect", sessions.disconnect_session),
    web.post(SESSION + "/fork", sessions.fork_session),
    web.get(SESSION + "/history", sessions.session_history),
    web.get(SESSION + "/context", sessions.session_context),
    web.get(SESSION + "/export", export.export_session),
    # share links of a session, and the read-only page a link opens
    web.post(SESSION + "/shares", shares.create_share),
    web.get(SESSION + "/shares", shares.list_shares),
    web.delete(SESSION + "/shares/{share_id}", shares.delete_share),
    web.get(shares.SHARE_PAGE, shares.share_page),
    web.get("/api/search", search.search),
    # notes and tasks: /events and /ready before /{id}
    web.get("/api/notes/events", notes.note_events),
    web.get("/api/notes", notes.get_notes),
    web.post("/api/notes", notes.post_note),
    web.delete("/api/notes", notes.delete_note),
    web.get("/api/tasks/ready", tasks.ready_tasks),
    web.get("/api/tasks/events", tasks.task_events),
    web.get("/api/tasks", tasks.list_tasks),
    web.post("/api/tasks", tasks.create_task),
    web.delete("/api/tasks", tasks.delete_task_by_query),
    web.get("/api/tasks/{id}", tasks.get_task),
    web.patch("/api/tasks/{id}", tasks.patch_task),
    web.delete("/api/tasks/{id}", tasks.delete_task),
    web.post("/api/tasks/{id}/status", tasks.set_task_status),
    web.get("/api/workspaces", workspaces.list_workspaces),
    web.post("/api/workspaces", workspaces.create_workspace),
    web.get(WORKSPACE, workspaces.get_workspace),
    web.patch(WORKSPACE, workspaces.patch_workspace),
    web.delete(WORKSPACE, workspaces.delete_workspace),
    web.post(WORKSPACE + "/webhooks", webhooks.create_webhook),
    web.get(WORKSPACE + "/webhooks", webhooks.list_webhooks),
    web.delete(WEBHOOK, webhooks.delete_webhook),
    web.get(WEBHOOK + "/deliveries", webhooks.list_deliveries),
    # the API documents and their explorer, the dashboard
    web.get(openapi.OPENAPI_PATH, openapi.openapi_json),
    web.get(explorer.EXPLORER_PATH, explorer.explorer_page),
    web.get(explorer.ASSETS_PATH + "/{name}", explorer.explorer_asset),
    web.get("/", dashboard.index),
    web.get("/static/{path:.+}", dashboard.asset),
    # operations
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics_handler),
]
