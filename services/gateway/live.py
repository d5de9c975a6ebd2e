"""One live session's state: its agent, its turn, pending permissions, mode/model options.

The SessionManager (runtime.py) owns every LiveSession; the agent's callbacks land here
and are passed on to it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from services.gateway import elicitation
from services.gateway.agents import AgentProcess
from services.gateway.eventlog import EventWriter
from shared.db import sessions
from shared.errors import AgentError
from shared.events import gateway_update

if TYPE_CHECKING:
    from services.gateway.runtime import SessionManager

ResumeMode = Literal["attached", "resumed", "native", "recreated"]


@dataclass(slots=True)
class Turn:
    future: asyncio.Future[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    done: bool = False
    outcome: dict[str, Any] | AgentError | None = None
    # the prompt's `_meta` as sent to the agent (its traceparent is stored on the events)
    meta: dict[str, Any] | None = None


def settle_turn(turn: Turn) -> None:
    """Answer the prompt with the turn's outcome (once)."""
    if turn.future.done() or turn.outcome is None:
        return
    if isinstance(turn.outcome, AgentError):
        turn.future.set_exception(turn.outcome)
    else:
        turn.future.set_result(turn.outcome)


@dataclass(slots=True)
class PendingPermission:
    tool_call_id: str
    options: list[dict[str, Any]]
    future: asyncio.Future[dict[str, Any]]


class LiveSession:
    """One session whose agent runs (or starts, or stops) on this instance."""

    def __init__(
        self, manager: SessionManager, row: sessions.SessionRow, writer: EventWriter
    ) -> None:
        s = row.session
        self.manager = manager
        self.session_id = s.session_id
        self.uuid = uuid.UUID(s.session_id)
        self.workspace_id = s.workspace_id
        self.provider = s.provider
        self.role = s.role
        self.cwd = Path(s.cwd)
        self.mode_id = s.mode_id
        self.model = s.model
        self.routa_agent_id = s.routa_agent_id
        self.auto_approve = row.auto_approve_permissions
        self.custom_command = row.custom_command
        self.custom_args = list(row.custom_args or [])
        self.mcp_servers = list(row.mcp_servers or [])
        self.writer = writer
        self.agent: AgentProcess | None = None
        self.agent_session_id: str | None = None
        self.acp_status = "connecting"
        self.status = "idle"
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(consume)
        self.resume_mode: ResumeMode = "recreated"
        self.turn: Turn | None = None
        self.permissions: dict[str, PendingPermission] = {}
        self.approve_scope: str | None = None  # "turn" | "session" after an approval
        self.capabilities: dict[str, Any] = {}
        self.config_options: list[dict[str, Any]] = []
        self.modes: dict[str, Any] | None = None
        self.legacy_models: dict[str, Any] | None = None
        self.mode_updates = 0
        self.stopping = False
        self.closed = (
            asyncio.Event()
        )  # set once the agent is reaped and the lease released
        self.last_used = time.monotonic()
        # monotonic time until which our lease surely runs (claim or renewal + LEASE_TTL)
        self.lease_until = 0.0

    # --- AgentCallbacks -------------------------------------------------------------
    def on_update(self, params: dict[str, Any]) -> None:
        self.last_used = time.monotonic()
        self.writer.append(params)
        update = params.get("update")
        if isinstance(update, dict):
            self.manager.interpret_update(self, update)

    def on_stderr(self, line: str) -> None:
        self.writer.append(
            gateway_update("process_output", source="stderr", data=line + "\n")
        )

    def on_exit(self, returncode: int) -> None:
        self.manager.spawn(self.manager.handle_exit(self, returncode))

    async def request_permission(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.manager.request_permission(self, params)

    async def holds_lease(self) -> bool:
        return await self.manager.holds_lease(self)

    def cancel_permission(self, tool_call_id: str) -> None:
        pending = self.permissions.pop(tool_call_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result({"outcome": {"outcome": "cancelled"}})

    def cancel_all_permissions(self) -> None:
        for tool_call_id in list(self.permissions):
            self.cancel_permission(tool_call_id)
        elicitation.cancel_all(self)  # held the same way, ended at the same points

    async def request_elicitation(
        self, elicitation_id: str, params: dict[str, Any], *, withdrawn: bool = False
    ) -> dict[str, Any]:
        return await elicitation.request(self, elicitation_id, params, withdrawn)

    def cancel_elicitation(self, elicitation_id: str) -> None:
        elicitation.cancel(self, elicitation_id)

    def emit(self, kind: str, /, **fields: Any) -> int:
        """Queue a gateway-made event (fields may include `kind`, e.g. a tool call's)."""
        return self.writer.append({"update": {"sessionUpdate": kind, **fields}})

    async def wait_ready(self) -> None:
        await asyncio.shield(self.ready)

    def model_choice(self) -> tuple[str, str | None, list[str]] | None:
        """How this agent switches models: ("config", id, values) or ("legacy", None, ids)."""
        for opt in self.config_options:
            if opt.get("id") == "model" or opt.get("category") == "model":
                return ("config", str(opt.get("id")), option_values(opt))
        if self.legacy_models and isinstance(
            self.legacy_models.get("availableModels"), list
        ):
            ids = [
                str(m.get("modelId"))
                for m in self.legacy_models["availableModels"]
                if isinstance(m, dict)
            ]
            return ("legacy", None, ids)
        return None

    def absorb_config_options(self, result: Any) -> None:
        """Keep the complete option list an agent returns from set_config_option."""
        if isinstance(result, dict) and isinstance(result.get("configOptions"), list):
            self.config_options = [
                o for o in result["configOptions"] if isinstance(o, dict)
            ]

    def mode_option(self) -> dict[str, Any] | None:
        """The agent's `mode` config option, preferred over legacy modes (acp.md §4.7)."""
        for opt in self.config_options:
            if opt.get("category") == "mode" or opt.get("id") == "mode":
                return opt
        return None

    def mode_ids(self) -> list[str] | None:
        option = self.mode_option()
        if option is not None:
            return option_values(option) or None
        if self.modes and isinstance(self.modes.get("availableModes"), list):
            return [
                str(m.get("id"))
                for m in self.modes["availableModes"]
                if isinstance(m, dict)
            ]
        return None


def consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved: someone may never await it."""
    if not fut.cancelled():
        _ = fut.exception()


def option_values(opt: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for entry in opt.get("options") or []:
        if not isinstance(entry, dict):
            continue
        if "value" in entry:
            values.append(str(entry["value"]))
        # grouped options
        values.extend(
            str(sub["value"])
            for sub in entry.get("options") or []
            if isinstance(sub, dict) and "value" in sub
        )
    return values


def current_model(
    config_options: list[dict[str, Any]], legacy: dict[str, Any] | None
) -> str | None:
    for opt in config_options:
        if (opt.get("id") == "model" or opt.get("category") == "model") and isinstance(
            opt.get("currentValue"), str
        ):
            return str(opt["currentValue"])
    if legacy and isinstance(legacy.get("currentModelId"), str):
        return str(legacy["currentModelId"])
    return None
