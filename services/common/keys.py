"""AppKeys of the resources both processes hold."""

from __future__ import annotations

from aiohttp import web

from shared.channels import Channels
from shared.db.connect import Pool
from shared.redisconn import Redis
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
CHANNELS = web.AppKey("channels", Channels)
PG_POOL = web.AppKey("pg_pool", Pool)
REDIS = web.AppKey("redis", Redis)
