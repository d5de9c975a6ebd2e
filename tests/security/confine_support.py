"""Helpers for the confinement tests: JSON-RPC with a token, the text of the last turn."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson

from tests.security.conftest import bearer

WAIT = 30.0  # hang guard only


async def rpc(
    client: Any, method: str, params: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    """The JSON-RPC reply object (result or error) of one call."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    resp = await client.post(
        "/api/acp", json=body, headers=bearer(token) if token else {}
    )
    assert resp.status == 200, await resp.text()
    reply: dict[str, Any] = await resp.json()
    return reply


async def refused(
    client: Any, method: str, params: dict[str, Any], token: str | None = None
) -> str:
    """The -32602 message of a call that must be refused."""
    reply = await rpc(client, method, params, token)
    assert "error" in reply, (params, reply)
    assert reply["error"]["code"] == -32602, reply
    return str(reply["error"]["message"])


async def new_session(
    client: Any, pool: Any, params: dict[str, Any], token: str | None = None
) -> str:
    """A session whose agent is ready; its id."""
    reply = await rpc(client, "session/new", params, token)
    assert "result" in reply, reply
    sid = str(reply["result"]["sessionId"])
    assert await wait_status(pool, sid, {"ready", "error"}) == "ready"
    return sid


async def wait_status(pool: Any, sid: str, wanted: set[str]) -> str:
    async with asyncio.timeout(WAIT):
        while True:
            value = await pool.fetchval(
                "SELECT acp_status FROM sessions WHERE session_id = $1", uuid.UUID(sid)
            )
            if value in wanted:
                return str(value)
            await asyncio.sleep(0.05)


async def turn_text(
    client: Any, pool: Any, sid: str, prompt: str, token: str | None = None
) -> str:
    """Prompt, then the agent's text of that turn from the log."""
    reply = await rpc(
        client, "session/prompt", {"sessionId": sid, "prompt": prompt}, token
    )
    assert "result" in reply, reply
    rows = await pool.fetch(
        "SELECT payload FROM session_events WHERE session_id = $1 ORDER BY event_id",
        uuid.UUID(sid),
    )
    updates = [orjson.loads(r["payload"])["update"] for r in rows]
    last = max(i for i, u in enumerate(updates) if u["sessionUpdate"] == "user_message")
    return "".join(
        u["content"].get("text", "")
        for u in updates[last:]
        if u["sessionUpdate"] == "agent_message_chunk"
    )


async def session_count(pool: Any, workspace_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM sessions WHERE workspace_id = $1", workspace_id
        )
    )
