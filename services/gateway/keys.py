"""Typed AppKeys of the gateway process.

Gateway modules import their keys from here (the hub's are in services/common/keys.py).
The types come from modules that import no keys (the session manager sits below the
wiring), so importing this module never closes a cycle. Add new keys at the end; never rename one.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.commands import CommandConsumer
from services.gateway.link import GatewayLink
from services.gateway.rpc import MethodRegistry
from services.gateway.runtime import SessionManager

# The live sessions of this instance: agents, turns, permissions, leases (runtime.py).
SESSION_MANAGER: web.AppKey[SessionManager] = web.AppKey("session_manager")
# The JSON-RPC methods POST /api/acp dispatches to (methods.registry()).
METHODS: web.AppKey[MethodRegistry] = web.AppKey("jsonrpc_methods")
# The OpenRPC and OpenAPI documents, serialised once at start-up.
OPENRPC_BODY: web.AppKey[bytes] = web.AppKey("openrpc_body")
OPENAPI_BODY: web.AppKey[bytes] = web.AppKey("gateway_openapi_body")
# This instance's end of the gateway-to-gateway channel (forwarded calls).
GATEWAY_LINK: web.AppKey[GatewayLink] = web.AppKey("gateway_link")
# The reader of the commands stream from internal services.
COMMAND_CONSUMER: web.AppKey[CommandConsumer] = web.AppKey("command_consumer")
