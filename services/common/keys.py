"""AppKeys of the resources both processes hold."""

from __future__ import annotations

from aiohttp import web

from services.common.hub import Hub, StreamConfig
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
