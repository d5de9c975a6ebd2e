"""AppKeys of the resources both processes hold: every web.AppKey of services/common.

The modules defining the types named here do not import this one (no cycles); the
modules reading the keys do.
"""

from __future__ import annotations

from aiohttp import web

from services.common.authstate import AuthState
from services.common.hub import Hub, StreamConfig
from services.common.metrics import Metrics
from services.common.readiness import Health
from services.common.revocations import Revocations
from shared.channels import Channels
from shared.db.connect import Pool
from shared.redisconn import Redis
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CHANNELS = web.AppKey("channels", Channels)
PG_POOL = web.AppKey("pg_pool", Pool)
REDIS: web.AppKey[Redis] = web.AppKey("redis")  # one server or a cluster client
# The process's pub/sub hub: feeds every SSE stream, and is the registry of open streams.
HUB = web.AppKey("hub", Hub)
# Heartbeat, queue size and polling of the SSE streams; tests replace it before the app starts.
STREAM_CONFIG = web.AppKey("stream_config", StreamConfig)
# Tokens, rate limiters and the auth mode (auth.py's auth_ctx sets it).
AUTH = web.AppKey("auth", AuthState)
# The process's Prometheus registry and its instruments.
METRICS = web.AppKey("metrics", Metrics)
# Readiness: /readyz runs its checks; draining makes it answer 503.
HEALTH = web.AppKey("health", Health)
# Hooks run when a share is revoked or the revocation channel is re-subscribed.
REVOCATIONS = web.AppKey("share_revocations", Revocations)
