"""Typed AppKeys of the gateway process.

Gateway modules import their keys from here. The types come from modules that import
no keys (the fan-out and the session manager sit below the wiring), so importing this
module never closes a cycle. Add new keys at the end; never rename one.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.fanout import Fanout, StreamConfig
from services.gateway.runtime import SessionManager

# The per-process fan-out of session events to SSE streams; also the registry of open streams.
FANOUT: web.AppKey[Fanout] = web.AppKey("fanout")
# Heartbeat, queue size and polling of the SSE streams; tests replace it before the app starts.
STREAM_CONFIG: web.AppKey[StreamConfig] = web.AppKey("stream_config")
# The live sessions of this instance: agents, turns, permissions, leases (runtime.py).
SESSION_MANAGER: web.AppKey[SessionManager] = web.AppKey("session_manager")
