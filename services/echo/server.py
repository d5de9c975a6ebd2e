"""Binds the echo agent to stdio with the SDK's Connection and agent router.

Built from the SDK's parts rather than `run_agent` for two reasons: the legacy
`session/set_model` method is not in the SDK's router (it only routes known ACP
methods and `_`-prefixed extensions), and `/crash` needs the stdout writer to flush.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from acp import Agent
from acp.agent.router import build_agent_router
from acp.connection import Connection
from acp.stdio import stdio_streams
from pydantic import BaseModel, ConfigDict, Field

from services.echo.agent import EchoAgent
from services.echo.peer import Peer

LEGACY_SET_MODEL = "session/set_model"
STDIO_LIMIT = 50 * 1024 * 1024  # the SDK's run_agent default: long lines are fine


class SetModelRequest(BaseModel):
    """Params of the removed-from-schema `session/set_model` request."""

    model_config = ConfigDict(populate_by_name=True)

    session_id: str = Field(alias="sessionId")
    model_id: str = Field(alias="modelId")


class EchoServer:
    """One agent on one JSON-RPC connection; requests are routed by the SDK."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._conn = Connection(self._dispatch, writer, reader, listening=False)
        self.agent = EchoAgent(Peer(self._conn, writer))
        # EchoAgent implements the subset of the Agent protocol it advertises; the
        # router answers -32601 for the rest, which is what we want.
        self._router = build_agent_router(cast(Agent, self.agent))

    async def _dispatch(
        self, method: str, params: Any | None, is_notification: bool
    ) -> Any:
        if method == LEGACY_SET_MODEL and not is_notification:
            request = SetModelRequest.model_validate(params)
            return await self.agent.set_model(request.session_id, request.model_id)
        return await self._router(method, params, is_notification)

    async def serve(self) -> None:
        """Answer messages until stdin closes."""
        try:
            await self._conn.main_loop()
        finally:
            await asyncio.shield(self._conn.close())


async def serve_stdio() -> None:
    """Run the echo agent on this process's stdin/stdout."""
    reader, writer = await stdio_streams(limit=STDIO_LIMIT)
    await EchoServer(reader, writer).serve()
