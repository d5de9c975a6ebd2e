"""Read-only SQL for a workspace and its codebases, as the session context shows them.

Kept apart from the workspaces module (owned by the workspace routes) so the session routes
need nothing more than these two reads.
"""

from __future__ import annotations

from typing import Any

from shared.db.connect import Executor

GET_WORKSPACE = "SELECT id, title FROM workspaces WHERE id = $1"

CODEBASES = """
SELECT id, repo_path, branch FROM codebases
WHERE workspace_id = $1 ORDER BY position, id
"""


async def workspace_summary(conn: Executor, workspace_id: str) -> dict[str, Any]:
    """`{id, title, codebases:[{id, repoPath, branch?}]}`; title absent if the workspace is gone."""
    row = await conn.fetchrow(GET_WORKSPACE, workspace_id)
    summary: dict[str, Any] = {"id": workspace_id}
    if row is not None:
        summary["title"] = row["title"]
    codebases: list[dict[str, Any]] = []
    for cb in await conn.fetch(CODEBASES, workspace_id):
        item: dict[str, Any] = {"id": cb["id"], "repoPath": cb["repo_path"]}
        if cb["branch"] is not None:
            item["branch"] = cb["branch"]
        codebases.append(item)
    summary["codebases"] = codebases
    return summary
