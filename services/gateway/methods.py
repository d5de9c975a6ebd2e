"""The session JSON-RPC methods (api.md §5.2-§5.4): validate params, call the SessionManager.

Params are validated with pydantic (unknown keys ignored, wrong types → -32602 naming the
field); the work happens in runtime.SessionManager, which takes plain arguments.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from services.common.keys import SETTINGS
from services.echo.catalog import MODELS as ECHO_MODELS
from services.echo.catalog import MODES as ECHO_MODES
from services.gateway import config, control, elicitation, jsonrpc
from services.gateway.forwarding import routed
from services.gateway.keys import SESSION_MANAGER
from services.gateway.rpc import METHODS, MethodRegistry, RpcCall
from services.gateway.runtime import NewSessionArgs, SessionManager, manager_ctx
from services.gateway.tracing import with_traceparent
from shared.errors import BadRequest, UnknownWorkspace
from shared.models.limits import check_params
from shared.models.session import ROLES
from shared.providers import PROVIDERS, resolve_binary

NAME_MAX = 200

P = TypeVar("P", bound=BaseModel)


class Params(BaseModel):
    # One spelling per parameter, camelCase: a snake_case key is unknown, so ignored like
    # any other unknown key. The scope check reads these same camelCase keys from the raw
    # params, so no second spelling can carry an id past it.
    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", strict=True)


class NewParams(Params):
    workspace_id: str
    name: str | None = None
    cwd: str | None = None
    branch: str | None = None
    provider: str | None = None
    mode_id: str | None = Field(
        default=None, validation_alias=AliasChoices("modeId", "mode")
    )
    role: str | None = None
    model: str | None = None
    parent_session_id: str | None = None
    specialist_id: str | None = None
    mcp_servers: list[Any] | None = None  # entries or names: checked by McpPolicy
    idempotency_key: str | None = None
    auto_approve_permissions: bool | None = None
    custom_command: str | None = None
    custom_args: list[str] | None = None


class SessionParams(Params):
    session_id: str


class PromptParams(SessionParams):
    prompt: str | list[dict[str, Any]] | None = None


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
    prompt: str | list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], str]:
    """ACP content blocks and the text of the user_message event; -32602 naming prompt."""
    if prompt is None:
        raise BadRequest("Invalid params: prompt is required")
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
    """-32602 naming prompt when its JSON is over MAX_PROMPT_BYTES (api.md §8)."""
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
    parent: uuid.UUID | None = None
    if p.parent_session_id is not None:
        try:
            parent = uuid.UUID(p.parent_session_id)
        except ValueError as err:
            raise BadRequest(
                f"Invalid parentSessionId: {p.parent_session_id!r} is not a session id"
            ) from err
    provider = p.provider or (
        "custom"
        if p.custom_command
        else call.app[SESSION_MANAGER].settings.default_provider
    )
    # echo answers after session/new has replied, so check what it offers up front (§9.26)
    if provider == "echo":
        if p.model is not None and p.model not in ECHO_MODELS:
            raise BadRequest(
                f"Invalid model: {p.model!r} is not offered by echo ({', '.join(ECHO_MODELS)})"
            )
        if p.mode_id is not None and p.mode_id not in ECHO_MODES:
            raise BadRequest(
                f"Invalid modeId: {p.mode_id!r} is not offered by echo ({', '.join(ECHO_MODES)})"
            )
    created = await _manager(call).create(
        NewSessionArgs(
            workspace_id=workspace_id,
            name=check_name(p.name),
            cwd=p.cwd,
            branch=p.branch,
            provider=p.provider,
            mode_id=p.mode_id,
            role=role,
            model=p.model,
            parent_session_id=parent,
            specialist_id=p.specialist_id,
            mcp_servers=_manager(call).mcp.check(p.mcp_servers),
            idempotency_key=p.idempotency_key or None,
            auto_approve_permissions=bool(p.auto_approve_permissions),
            custom_command=p.custom_command,
            custom_args=p.custom_args,
        )
    )
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
    return await _manager(call).prompt(
        p.session_id, blocks, text, call.allowed_workspaces, meta=meta
    )


async def session_cancel(call: RpcCall) -> dict[str, Any]:
    p = parse(SessionParams, call.params)
    await _manager(call).cancel(p.session_id, call.allowed_workspaces)
    return {}


async def session_set_mode(call: RpcCall) -> dict[str, Any]:
    p = parse(SetModeParams, call.params)
    await _manager(call).set_mode(p.session_id, p.mode_id, call.allowed_workspaces)
    return {}


async def session_set_model(call: RpcCall) -> dict[str, Any]:
    p = parse(SetModelParams, call.params)
    await _manager(call).set_model(p.session_id, p.model, call.allowed_workspaces)
    return {}


async def session_set_config_option(call: RpcCall) -> dict[str, Any]:
    p = parse(SetConfigOptionParams, call.params)
    return await config.set_config_option(
        _manager(call), p.session_id, p.config_id, p.value, call.allowed_workspaces
    )


async def session_load(call: RpcCall) -> dict[str, Any]:
    p = parse(LoadParams, call.params)
    return await _manager(call).load(p.session_id, call.allowed_workspaces, p.cwd)


async def session_respond_user_input(call: RpcCall) -> dict[str, Any]:
    p = parse(RespondParams, call.params)
    r = p.response
    if r.option_id is None and r.decision is None:
        raise BadRequest("Invalid params: response needs optionId or decision")
    await _manager(call).respond(
        p.session_id,
        p.tool_call_id,
        r.option_id,
        r.decision,
        r.scope,
        call.allowed_workspaces,
    )
    return {"ok": True}


async def session_respond_elicitation(call: RpcCall) -> dict[str, Any]:
    p = parse(RespondElicitationParams, call.params)
    await elicitation.respond(
        _manager(call),
        p.session_id,
        p.elicitation_id,
        p.action,
        p.content,
        call.allowed_workspaces,
    )
    return {"ok": True}


async def providers_list(call: RpcCall) -> dict[str, Any]:
    """Every preset with whether it can run here; available first (api.md §5.2)."""
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


def setup(app: web.Application) -> None:
    """The session manager (after Postgres/Redis), the control listener, the methods."""
    if METHODS not in app:
        app[METHODS] = MethodRegistry()
    app.cleanup_ctx.append(manager_ctx(SESSION_MANAGER))
    app.cleanup_ctx.append(control.control_ctx)
    registry = app[METHODS]
    registry.add("initialize", jsonrpc.initialize)
    registry.add("session/new", session_new)
    # Session calls run where the session lives: here, on its owner, or here after
    # adopting it from a dead owner (forwarding.route, api.md §7).
    registry.add("session/prompt", routed(session_prompt))
    registry.add("session/cancel", routed(session_cancel))
    registry.add("session/set_mode", routed(session_set_mode))
    registry.add("session/set_model", routed(session_set_model))
    registry.add("session/set_config_option", routed(session_set_config_option))
    registry.add("session/load", routed(session_load))
    registry.add("session/respond_user_input", routed(session_respond_user_input))
    registry.add("session/respond_elicitation", routed(session_respond_elicitation))
    registry.add("_providers/list", providers_list)
