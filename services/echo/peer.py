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
    CreateFormSessionElicitationRequest,
    CreateTerminalRequest,
    CreateTerminalResponse,
    ElicitationSchema,
    PermissionOption,
    ReadTextFileRequest,
    ReadTextFileResponse,
    ReleaseTerminalRequest,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionNotification,
    TerminalOutputRequest,
    TerminalOutputResponse,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
    UsageUpdate,
    WaitForTerminalExitRequest,
    WaitForTerminalExitResponse,
    WriteTextFileRequest,
)
from acp.utils import notify_model, request_model, serialize_params

EchoUpdate = (
    AgentMessageChunk
    | AgentThoughtChunk
    | AgentPlanUpdate
    | ToolCallStart
    | ToolCallProgress
    | UsageUpdate
)


class Peer:
    """Sends to the client over the SDK connection; owns the stdout writer for flushing."""

    def __init__(self, conn: Connection, stdout: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._stdout = stdout
        # what the client advertised in its last `initialize` (ACP: per connection)
        self.terminal = False

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

    async def create_terminal(
        self, session_id: str, command: str, args: list[str], cwd: str
    ) -> str:
        """`terminal/create`; answers the terminal's id at once (the command runs on)."""
        response = await request_model(
            self._conn,
            CLIENT_METHODS["terminal_create"],
            CreateTerminalRequest(
                session_id=session_id, command=command, args=args, cwd=cwd
            ),
            CreateTerminalResponse,
        )
        return response.terminal_id

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str
    ) -> WaitForTerminalExitResponse:
        """`terminal/wait_for_exit`: returns once the command has ended."""
        return await request_model(
            self._conn,
            CLIENT_METHODS["terminal_wait_for_exit"],
            WaitForTerminalExitRequest(session_id=session_id, terminal_id=terminal_id),
            WaitForTerminalExitResponse,
        )

    async def terminal_output(
        self, session_id: str, terminal_id: str
    ) -> TerminalOutputResponse:
        """`terminal/output`: what the command wrote so far (bounded by the client)."""
        return await request_model(
            self._conn,
            CLIENT_METHODS["terminal_output"],
            TerminalOutputRequest(session_id=session_id, terminal_id=terminal_id),
            TerminalOutputResponse,
        )

    async def release_terminal(self, session_id: str, terminal_id: str) -> None:
        """`terminal/release`: the client kills the command if it still runs."""
        await self._conn.send_request(
            CLIENT_METHODS["terminal_release"],
            serialize_params(
                ReleaseTerminalRequest(session_id=session_id, terminal_id=terminal_id)
            ),
        )

    async def create_elicitation(
        self, session_id: str, message: str, schema: ElicitationSchema
    ) -> dict[str, Any]:
        """`elicitation/create` in form mode; the raw answer (`action`, `content`).

        The answer is read raw so that echo can say whatever came back.
        """
        params = serialize_params(
            CreateFormSessionElicitationRequest(
                session_id=session_id,
                message=message,
                mode="form",
                requested_schema=schema,
            )
        )
        # the SDK drops defaults; a form's JSON Schema still says it is an object
        params["requestedSchema"]["type"] = "object"
        response = await self._conn.send_request(
            CLIENT_METHODS["elicitation_create"], params
        )
        return response if isinstance(response, dict) else {}

    async def flush(self) -> None:
        """Wait until everything written to stdout has left the process."""
        transport = self._stdout.transport
        if transport.is_closing():
            return
        # With a zero high-water mark, drain() returns only once the buffer is empty.
        transport.set_write_buffer_limits(high=0)
        await self._stdout.drain()
