"""Typed AppKeys of the gateway process (house-style §4.2 rule 2).

Gateway modules import their keys from here (the hub's are in services/common/keys.py).
The types come from modules that import no keys (the session manager sits below the
wiring), so importing this module never closes a cycle. Add new keys at the end; never rename one.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.runtime import SessionManager

# The live sessions of this instance: agents, turns, permissions, leases (runtime.py).
SESSION_MANAGER: web.AppKey[SessionManager] = web.AppKey("session_manager")
