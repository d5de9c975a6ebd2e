"""What both app factories share: base resources, middlewares and health checks."""

from __future__ import annotations

from aiohttp import web

from services.common.auth import setup_auth
from services.common.health import Health, setup_health
from services.common.http import MAX_BODY_BYTES
from services.common.keys import CHANNELS, PG_POOL, REDIS, SETTINGS
from services.common.metrics import setup_metrics
from services.common.middleware import setup_http
from services.common.resources import postgres_ctx, redis_ctx
from services.common.shares import setup_share_revocations
from shared.channels import Channels
from shared.settings import Settings


def base_app(settings: Settings, service: str) -> web.Application:
    """An application with settings, channels, Postgres and Redis wired in, plus /healthz and /readyz."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[CHANNELS] = Channels(settings.redis_prefix, sharded=settings.sharded_pubsub)
    setup_http(app)
    setup_metrics(app)

    async def check_postgres() -> object:
        return await app[PG_POOL].fetchval("SELECT 1")

    async def check_redis() -> object:
        return await app[REDIS].ping()

    setup_health(
        app,
        Health(
            service,
            settings.instance_id,
            checks={"postgres": check_postgres, "redis": check_redis},
        ),
    )
    app.cleanup_ctx.extend([postgres_ctx, redis_ctx])
    # after Postgres (it reads api_tokens); its middleware runs innermost
    setup_auth(app)
    # after auth (it drops revoked shares from the token cache)
    setup_share_revocations(app)
    return app
