"""One JSON-RPC call through the origin, as the browser tests' setup makes it."""

from __future__ import annotations

from typing import Any

import aiohttp


async def rpc(http: aiohttp.ClientSession, method: str, params: dict[str, Any]) -> Any:
    """POST /api/acp; the call's result (the test fails on an error reply)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with http.post("/api/acp", json=body) as resp:
        reply = await resp.json()
    assert "result" in reply, reply
    return reply["result"]
