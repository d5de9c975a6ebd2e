"""The modes and models the built-in echo agent offers, defined once.

A leaf module: the echo agent is a subprocess started for every echo session, and importing
`shared.providers` from it would pull in the settings and the Redis client (about 0.1 s of
start-up per session); the provider preset and the agent's catalogue both take these.
"""

from __future__ import annotations

ECHO_MODES: dict[str, str] = {"chat": "Chat", "plan": "Plan"}
ECHO_MODELS: dict[str, str] = {"echo-small": "Echo small", "echo-large": "Echo large"}
