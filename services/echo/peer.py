"""The client as seen from the agent: session updates and the client methods echo calls."""

from __future__ import annotations

import asyncio
from typing import Any

from acp.connection import Connection
from acp.meta import CLIENT_METHODS
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    PermissionOption,
    ReadTextFileRequest,
    ReadTextFileResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionNotification,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    WriteTextFileRequest,
)
from acp.utils import notify_model, request_model, serialize_params

EchoUpdate = (
    AgentMessageChunk
    | AgentThoughtChunk
    | AgentPlanUpdate
    | ToolCallStart
    | ToolCallProgress
)


class Peer:
    """Sends to the client over the SDK connection; owns the stdout writer for flushing."""

    def __init__(self, conn: Connection, stdout: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._stdout = stdout

    async def update(self, session_id: str, update: EchoUpdate) -> None:
        """A typed `session/update` notification."""
        await notify_model(
            self._conn,
            CLIENT_METHODS["session_update"],
            SessionNotification(session_id=session_id, update=update),
        )

    async def raw_update(self, session_id: str, update: dict[str, Any]) -> None:
        """A `session/update` the SDK's typed union would refuse (unknown kinds)."""
        await self._conn.send_notification(
            CLIENT_METHODS["session_update"],
            {"sessionId": session_id, "update": update},
        )

    async def request_permission(
        self,
        session_id: str,
        tool_call: ToolCallUpdate,
        options: list[PermissionOption],
    ) -> RequestPermissionResponse:
        """`session/request_permission`; the answer says which option was chosen."""
        return await request_model(
            self._conn,
            CLIENT_METHODS["session_request_permission"],
            RequestPermissionRequest(
                session_id=session_id, tool_call=tool_call, options=options
            ),
            RequestPermissionResponse,
        )

    async def read_text_file(self, session_id: str, path: str) -> str:
        """`fs/read_text_file` of the whole file."""
        response = await request_model(
            self._conn,
            CLIENT_METHODS["fs_read_text_file"],
            ReadTextFileRequest(session_id=session_id, path=path),
            ReadTextFileResponse,
        )
        return response.content

    async def write_text_file(self, session_id: str, path: str, content: str) -> None:
        """`fs/write_text_file`; any non-error answer counts as written."""
        await self._conn.send_request(
            CLIENT_METHODS["fs_write_text_file"],
            serialize_params(
                WriteTextFileRequest(session_id=session_id, path=path, content=content)
            ),
        )

    async def flush(self) -> None:
        """Wait until everything written to stdout has left the process."""
        transport = self._stdout.transport
        if transport.is_closing():
            return
        # With a zero high-water mark, drain() returns only once the buffer is empty.
        transport.set_write_buffer_limits(high=0)
        await self._stdout.drain()
