"""Typed AppKeys of the dev origin (origin.py): every web.AppKey of services/devtools."""

from __future__ import annotations

from aiohttp import ClientSession, web

from services.devtools.upstreams import Upstreams

# The two backends the origin proxies to.
UPSTREAMS = web.AppKey("upstreams", Upstreams)
# The one client session the proxy sends upstream with.
CLIENT = web.AppKey("client", ClientSession)
