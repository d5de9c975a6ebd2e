"""Typed AppKeys of the gateway process (house-style §4.2 rule 2).

Gateway modules import their keys from here; this module imports no gateway module at run
time (types are referenced under TYPE_CHECKING), so anything may import it without cycles.
Add new keys at the end; never rename one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.gateway.fanout import Fanout, StreamConfig
    from services.gateway.runtime import SessionManager

# The per-process fan-out of session events to SSE streams; also the registry of open streams.
FANOUT: web.AppKey[Fanout] = web.AppKey("fanout")
# Heartbeat, queue size and polling of the SSE streams; tests replace it before the app starts.
STREAM_CONFIG: web.AppKey[StreamConfig] = web.AppKey("stream_config")
# The live sessions of this instance: agents, turns, permissions, leases (runtime.py).
SESSION_MANAGER: web.AppKey[SessionManager] = web.AppKey("session_manager")
