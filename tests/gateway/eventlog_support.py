"""Helpers of the event writer tests: a session row to write to, and a message chunk."""

from __future__ import annotations

import uuid

from shared.db import sessions
from shared.events import gateway_update


async def new_session(pool, workspace_id: str) -> uuid.UUID:
    """Insert a bare session row (no agent); returns its id."""
    sid = uuid.uuid4()
    async with pool.acquire() as conn:
        await sessions.insert(
            conn,
            sessions.NewSession(
                session_id=sid, workspace_id=workspace_id, cwd="/tmp", provider="echo"
            ),
        )
    return sid


def chunk(i: int) -> dict:
    """An agent_message_chunk whose text is `i`."""
    return gateway_update(
        "agent_message_chunk", content={"type": "text", "text": str(i)}
    )
