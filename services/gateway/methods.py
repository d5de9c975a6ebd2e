"""The session JSON-RPC methods: validate params, call the session.

Params are validated with pydantic (unknown keys ignored, wrong types → -32602 naming the
field). A method looks its session up in the SessionManager (runtime.py), which resumes it
here when needed, then calls the session itself (live.LiveSession) with plain arguments.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import AliasChoices, BaseModel, Field, ValidationError

from services.common.keys import CHANNELS, HUB, METRICS, PG_POOL, REDIS, SETTINGS
from services.gateway import jsonrpc
from services.gateway.elicitation import no_pending as no_pending_elicitation
from services.gateway.forwarding import routed
from services.gateway.keys import SESSION_MANAGER
from services.gateway.params import NewParams, Params
from services.gateway.permissions import no_pending
from services.gateway.rpc import MethodRegistry, RpcCall
from services.gateway.runtime import SessionManager
from services.gateway.tracing import with_traceparent
from shared.errors import BadRequest, UnknownWorkspace
from shared.models.limits import check_params
from shared.models.session import NAME_MAX, ROLES
from shared.providers import PROVIDERS, get_provider, resolve_binary

P = TypeVar("P", bound=BaseModel)


class SessionParams(Params):
    session_id: str


class PromptParams(SessionParams):
    prompt: str | list[dict[str, Any]]
    if_busy: Literal["reject", "enqueue", "interrupt"] = "reject"


class CancelParams(SessionParams):
    queued_prompt_id: str | None = None


class InitializeParams(Params):
    """`initialize`: what the client says of itself; the gateway answers the same to all."""

    protocol_version: int | None = None
    client_capabilities: dict[str, Any] | None = None
    client_info: dict[str, Any] | None = None


class SetModeParams(SessionParams):
    mode_id: str = Field(validation_alias=AliasChoices("modeId", "mode"))


class SetModelParams(SessionParams):
    model: str


class SetConfigOptionParams(SessionParams):
    config_id: str
    value: str | bool


class LoadParams(SessionParams):
    cwd: str | None = None


class UserResponse(Params):
    option_id: str | None = None
    decision: Literal["approve", "deny"] | None = None
    scope: Literal["turn", "session"] | None = None


class RespondParams(SessionParams):
    tool_call_id: str
    response: UserResponse


class RespondElicitationParams(SessionParams):
    elicitation_id: str
    action: Literal["accept", "decline", "cancel"]
    content: dict[str, Any] | None = None


def parse(model: type[P], params: dict[str, Any]) -> P:
    """Validate params; the -32602 message names the offending field."""
    try:
        parsed = model.model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "params"
        if first["type"] == "missing":
            raise BadRequest(f"Invalid params: {loc} is required") from err
        raise BadRequest(f"Invalid params: {loc}: {first['msg']}") from err
    check_params(parsed)
    session_id = getattr(parsed, "session_id", None)
    if isinstance(session_id, str):
        # log lines of this call (the access log included) carry the session id
        structlog.contextvars.bind_contextvars(session_id=session_id)
    return parsed


def _manager(call: RpcCall) -> SessionManager:
    return call.app[SESSION_MANAGER]


def check_name(name: str | None) -> str | None:
    if name is None:
        return None
    trimmed = name.strip()
    if not 1 <= len(trimmed) <= NAME_MAX:
        raise BadRequest(
            f"Invalid name: must be 1-{NAME_MAX} characters after trimming"
        )
    return trimmed


def prompt_blocks(
    prompt: str | list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], str]:
    """ACP content blocks and the text of the user_message event; -32602 naming prompt."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise BadRequest("Invalid params: prompt is empty")
        return [{"type": "text", "text": prompt}], prompt
    blocks: list[dict[str, Any]] = []
    texts: list[str] = []
    for i, block in enumerate(prompt):
        kind = block.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"Invalid params: prompt.{i}.type is required")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"Invalid params: prompt.{i}.text must be a string")
            if text.strip():
                texts.append(text)
                blocks.append(block)
            continue
        blocks.append(block)
        label = block.get("name") or block.get("uri") or kind
        texts.append(f"[{label}]")
    if not blocks:
        raise BadRequest("Invalid params: prompt has no text or content")
    return blocks, "\n".join(texts)


def check_prompt_size(prompt: object, limit: int) -> None:
    """-32602 naming prompt when its JSON is over MAX_PROMPT_BYTES."""
    size = len(orjson.dumps(prompt))
    if size > limit:
        raise BadRequest(
            f"Invalid params: prompt is too large ({size} bytes, limit {limit})"
        )


async def session_new(call: RpcCall) -> dict[str, Any]:
    p = parse(NewParams, call.params)
    workspace_id = p.workspace_id.strip()
    if not workspace_id:
        raise BadRequest("Invalid params: workspaceId is required")
    if (
        call.allowed_workspaces is not None
        and workspace_id not in call.allowed_workspaces
    ):
        raise UnknownWorkspace(workspace_id)
    role = (p.role or "CRAFTER").upper()
    if role not in ROLES:
        raise BadRequest(f"Invalid role: {p.role!r} (one of {', '.join(ROLES)})")
    _ = p.parent()  # -32602 naming parentSessionId, in the order of the checks
    manager = _manager(call)
    # The agent answers after session/new has replied: what a preset is known to offer
    # is checked up front.
    preset = get_provider(p.provider_id(manager.settings.default_provider))
    if preset is not None:
        if p.model is not None and preset.models and p.model not in preset.models:
            raise BadRequest(
                f"Invalid model: {p.model!r} is not offered by {preset.id} ({', '.join(preset.models)})"
            )
        if p.mode_id is not None and preset.modes and p.mode_id not in preset.modes:
            raise BadRequest(
                f"Invalid modeId: {p.mode_id!r} is not offered by {preset.id} ({', '.join(preset.modes)})"
            )
    checked = p.model_copy(
        update={
            "workspace_id": workspace_id,
            "role": role,
            "name": check_name(p.name),
            "mcp_servers": manager.mcp.check(p.mcp_servers),
            "idempotency_key": p.idempotency_key or None,
        }
    )
    created = await manager.create(checked)
    structlog.contextvars.bind_contextvars(session_id=created["sessionId"])
    return created


async def session_prompt(call: RpcCall) -> dict[str, Any]:
    p = parse(PromptParams, call.params)
    blocks, text = prompt_blocks(p.prompt)
    check_prompt_size(p.prompt, call.app[SETTINGS].max_prompt_bytes)
    client_meta = call.params.get("_meta")
    if client_meta is not None and not isinstance(client_meta, dict):
        raise BadRequest("Invalid params: _meta must be an object")
    meta, traceparent = with_traceparent(client_meta)
    # the access log line and every log line of this turn carry it
    structlog.contextvars.bind_contextvars(traceparent=traceparent)
    live = await _manager(call).session(p.session_id, call.allowed_workspaces)
    return await live.prompt(blocks, text, meta, p.if_busy)


async def session_cancel(call: RpcCall) -> dict[str, Any]:
    p = parse(CancelParams, call.params)
    queued_id = None
    if p.queued_prompt_id is not None:
        queued_id = parse_queued_prompt_id(p.queued_prompt_id)
    manager = _manager(call)
    # only a running agent has a turn to cancel: no resume for it
    live = await manager.find(p.session_id, call.allowed_workspaces)
    if queued_id is not None:
        # one queued prompt (or its turn, once it runs); a finished or unknown one: {}
        if live is None or not await live.drop_queued(queued_id):
            await manager.drop_stored_prompt(p.session_id, queued_id)
    elif live is not None:
        await live.cancel()
    return {}


def parse_queued_prompt_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(
            f"Invalid params: queuedPromptId is not a queued prompt id: {value!r}"
        ) from None


async def session_set_mode(call: RpcCall) -> dict[str, Any]:
    p = parse(SetModeParams, call.params)
    live = await _manager(call).session(p.session_id, call.allowed_workspaces)
    await live.set_mode(p.mode_id)
    return {}


async def session_set_model(call: RpcCall) -> dict[str, Any]:
    p = parse(SetModelParams, call.params)
    live = await _manager(call).session(p.session_id, call.allowed_workspaces)
    await live.set_model(p.model)
    return {}


async def session_set_config_option(call: RpcCall) -> dict[str, Any]:
    p = parse(SetConfigOptionParams, call.params)
    live = await _manager(call).session(p.session_id, call.allowed_workspaces)
    return await live.set_config_option(p.config_id, p.value)


async def session_load(call: RpcCall) -> dict[str, Any]:
    p = parse(LoadParams, call.params)
    return await _manager(call).load(p.session_id, call.allowed_workspaces, p.cwd)


async def session_respond_user_input(call: RpcCall) -> dict[str, Any]:
    p = parse(RespondParams, call.params)
    r = p.response
    if r.option_id is None and r.decision is None:
        raise BadRequest("Invalid params: response needs optionId or decision")
    live = await _manager(call).find(p.session_id, call.allowed_workspaces)
    if live is None:
        raise no_pending(p.tool_call_id)
    live.respond(p.tool_call_id, r.option_id, r.decision, r.scope)
    return {"ok": True}


async def session_respond_elicitation(call: RpcCall) -> dict[str, Any]:
    p = parse(RespondElicitationParams, call.params)
    live = await _manager(call).find(p.session_id, call.allowed_workspaces)
    if live is None:
        raise no_pending_elicitation(p.elicitation_id)
    live.respond_elicitation(p.elicitation_id, p.action, p.content)
    return {"ok": True}


async def providers_list(call: RpcCall) -> dict[str, Any]:
    """Every preset with whether it can run here; available first."""
    settings = call.app[SESSION_MANAGER].settings
    entries: list[dict[str, Any]] = []
    for provider in PROVIDERS.values():
        if provider.id == "custom":
            available = settings.allow_custom_commands
            command = "customCommand customArgs…"
        else:
            available = resolve_binary(provider, settings) is not None
            binary = "python" if provider.id == "echo" else provider.binary
            command = " ".join([binary, *provider.args])
        entries.append(
            {
                "id": provider.id,
                "name": provider.name,
                "description": provider.description,
                "command": command,
                "status": "available" if available else "unavailable",
            }
        )
    entries.sort(key=lambda e: e["status"] != "available")
    return {"providers": entries}


async def manager_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: after Postgres/Redis; stops every agent on exit."""
    manager = SessionManager(app[SETTINGS], app[PG_POOL], app[REDIS], app[CHANNELS])
    app[SESSION_MANAGER] = manager
    hub = app.get(HUB)
    if hub is not None:
        manager.capacity.has_subscribers = lambda session_id: (
            hub.subscriber_count(session_id) > 0
        )
    metrics = app.get(METRICS)
    if metrics is not None:
        manager.deps.metrics = metrics
        metrics.live_agents.set_function(lambda: len(manager.live))
        written, latency = metrics.events_written, metrics.event_write_latency

        def _observe(count: int, seconds: float) -> None:
            written.inc(count)
            latency.observe(seconds)

        manager.on_batch = _observe

        def _agent_failed(running: bool) -> None:
            failures = (
                metrics.agent_crashes if running else metrics.agent_start_failures
            )
            failures.inc()

        manager.deps.on_agent_failure = _agent_failed
    await manager.leases.release_stale()
    manager.start_loops()
    yield
    await manager.close()


def registry() -> MethodRegistry:
    """Every JSON-RPC method of the gateway (the OpenRPC document lists the same)."""
    methods = MethodRegistry()
    methods.add("initialize", jsonrpc.initialize)
    methods.add("session/new", session_new)
    # Session calls run where the session lives: here, on its owner, or here after
    # adopting it from a dead owner (forwarding.route).
    methods.add("session/prompt", routed(session_prompt))
    methods.add("session/cancel", routed(session_cancel))
    methods.add("session/set_mode", routed(session_set_mode))
    methods.add("session/set_model", routed(session_set_model))
    methods.add("session/set_config_option", routed(session_set_config_option))
    methods.add("session/load", routed(session_load))
    methods.add("session/respond_user_input", routed(session_respond_user_input))
    methods.add("session/respond_elicitation", routed(session_respond_elicitation))
    methods.add("_providers/list", providers_list)
    return methods
