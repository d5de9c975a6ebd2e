"""The echo agent's ACP methods: sessions, modes, the model option, prompts, cancel."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from acp.schema import (
    ClientCapabilities,
    InitializeResponse,
    NewSessionResponse,
    PromptResponse,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
    StopReason,
)

from services.echo import catalog
from services.echo.errors import AGENT_ERROR, EchoError, invalid_params
from services.echo.peer import Peer
from services.echo.text import prompt_text
from services.echo.turn import Turn, run_turn


@dataclass(slots=True)
class EchoSession:
    """State of one session: where it runs, its mode and model, its running turn."""

    session_id: str
    cwd: str
    mode_id: str = catalog.DEFAULT_MODE
    model: str = catalog.DEFAULT_MODEL
    turn: asyncio.Task[StopReason] | None = field(default=None)
    cancel_requested: bool = False


class EchoAgent:
    """Implements what echo advertises and nothing else (no load, no auth).

    Deliberately not a subclass of `acp.Agent`: the Protocol's stub bodies would answer
    methods echo does not offer; missing ones must stay -32601.
    """

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._sessions: dict[str, EchoSession] = {}

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        **_: Any,
    ) -> InitializeResponse:
        """Always answer version 1, the only one echo speaks; note the client's terminals."""
        self._peer.terminal = bool(
            client_capabilities is not None and client_capabilities.terminal
        )
        return InitializeResponse(
            protocol_version=catalog.PROTOCOL_VERSION,
            agent_capabilities=catalog.agent_capabilities(),
            agent_info=catalog.agent_info(),
            auth_methods=[],
        )

    async def new_session(self, cwd: str, **_: Any) -> NewSessionResponse:
        """A fresh session; no unsolicited updates, so the gateway's log holds only its own events."""
        session = EchoSession(session_id=str(uuid.uuid4()), cwd=cwd)
        self._sessions[session.session_id] = session
        return NewSessionResponse(
            session_id=session.session_id,
            modes=catalog.mode_state(session.mode_id),
            config_options=list(catalog.config_options(session.model)),
        )

    async def set_session_mode(
        self, session_id: str, mode_id: str, **_: Any
    ) -> SetSessionModeResponse:
        """Switch mode; the gateway, not echo, emits current_mode_update."""
        session = self._session(session_id)
        if mode_id not in catalog.MODES:
            raise invalid_params(
                f"Unknown modeId: {mode_id} (echo offers {catalog.offered(catalog.MODES)})"
            )
        session.mode_id = mode_id
        return SetSessionModeResponse()

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **_: Any
    ) -> SetSessionConfigOptionResponse:
        """Only `model` exists; answers the complete option list."""
        session = self._session(session_id)
        if config_id != catalog.MODEL_CONFIG_ID:
            raise invalid_params(
                f"Unknown configId: {config_id} (echo offers {catalog.MODEL_CONFIG_ID})"
            )
        self._select_model(session, value)
        return SetSessionConfigOptionResponse(
            config_options=list(catalog.config_options(session.model))
        )

    async def set_model(
        self, session_id: str, model_id: str
    ) -> SetSessionConfigOptionResponse:
        """Legacy `session/set_model`: same check, same answer as the model option."""
        return await self.set_config_option(
            catalog.MODEL_CONFIG_ID, session_id, model_id
        )

    async def prompt(
        self, session_id: str, prompt: list[Any], **_: Any
    ) -> PromptResponse:
        """Run one turn in its own task so that session/cancel can stop it at once."""
        session = self._session(session_id)
        if session.turn is not None and not session.turn.done():
            raise EchoError(AGENT_ERROR, "echo: a prompt is already running")
        session.cancel_requested = False
        context = Turn(session_id, session.cwd, self._peer)
        turn = asyncio.create_task(
            run_turn(context, prompt_text(prompt)), name=f"echo-turn-{session_id}"
        )
        session.turn = turn
        try:
            stop_reason = await turn
        except asyncio.CancelledError:
            current = asyncio.current_task()
            ours = current is None or current.cancelling() == 0
            if ours and session.cancel_requested and turn.cancelled():
                return PromptResponse(stop_reason="cancelled")
            raise
        finally:
            if session.turn is turn:
                session.turn = None
        return PromptResponse(stop_reason=stop_reason, usage=context.usage)

    async def cancel(self, session_id: str, **_: Any) -> None:
        """Cancel the running turn of that session, if any; the prompt answers `cancelled`."""
        session = self._sessions.get(session_id)
        if session is None or session.turn is None or session.turn.done():
            return
        session.cancel_requested = True
        session.turn.cancel()

    def _session(self, session_id: str) -> EchoSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise invalid_params(f"Unknown sessionId: {session_id}")
        return session

    @staticmethod
    def _select_model(session: EchoSession, value: str | bool) -> None:
        if not isinstance(value, str) or value not in catalog.MODELS:
            raise invalid_params(
                f"Unknown model: {value} (echo offers {catalog.offered(catalog.MODELS)})"
            )
        session.model = value
