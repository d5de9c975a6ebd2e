"""The JSON-RPC method registry: the seam between the envelope (jsonrpc.py) and the methods.

A method is `async def method(call: RpcCall) -> result`, where the result is anything orjson
can encode (dict, list, pydantic model dumped by the method). It signals failure by raising a
`shared.errors.DomainError` (its `jsonrpc_code`, `message` and `data` become the error
object) or `RpcError` for a code of its own. Every entry point (HTTP, the Redis commands
stream, forwarding from another gateway) dispatches through the same registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared.errors import DomainError


class RpcError(DomainError):
    """An error with an explicit JSON-RPC code."""

    def __init__(self, code: int, message: str, *, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.jsonrpc_code = code


@dataclass(slots=True)
class RpcCall:
    app: web.Application
    method: str
    params: dict[str, Any]
    # Workspaces the caller may use (None = all); set by auth, checked by methods.
    allowed_workspaces: frozenset[str] | None = None
    # True when this call was forwarded by another gateway: never forward it again.
    forwarded: bool = False


Method = Callable[[RpcCall], Awaitable[Any]]


@dataclass(slots=True)
class MethodRegistry:
    methods: dict[str, Method] = field(default_factory=dict)

    def add(self, name: str, method: Method) -> None:
        if name in self.methods:
            raise ValueError(f"method {name} registered twice")
        self.methods[name] = method

    def get(self, name: str) -> Method | None:
        return self.methods.get(name)
