"""What both processes share: the base application, and a create_app of only the common parts.

`base_app` makes the application with the keys and the one middleware every process has.
It registers no cleanup context, hook or route: each process's create_app lists all of
its own, in order, so the order of start-up and shutdown is read in one place.
"""

from __future__ import annotations

from aiohttp import web

from services.common.auth import auth_ctx
from services.common.health import healthz, mark_draining, metrics_handler, readyz
from services.common.http import MAX_BODY_BYTES
from services.common.keys import (
    CHANNELS,
    HEALTH,
    METRICS,
    PG_POOL,
    REDIS,
    REVOCATIONS,
    SETTINGS,
)
from services.common.metrics import Metrics
from services.common.middleware import app_middleware
from services.common.readiness import Health
from services.common.resources import postgres_ctx, redis_ctx
from services.common.revocations import Revocations
from services.common.shares import revocations_ctx
from shared.channels import Channels
from shared.settings import Settings


def base_app(settings: Settings, service: str) -> web.Application:
    """Settings, channels, metrics, health (Postgres and Redis checks), share revocations."""
    # the process's one middleware: request id, log context, metrics, auth, errors
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[app_middleware])
    app[SETTINGS] = settings
    app[CHANNELS] = Channels(settings.redis_prefix, sharded=settings.sharded_pubsub)
    app[METRICS] = Metrics()
    app[REVOCATIONS] = Revocations()

    async def check_postgres() -> object:
        return await app[PG_POOL].fetchval("SELECT 1")

    async def check_redis() -> object:
        return await app[REDIS].ping()

    app[HEALTH] = Health(
        service,
        settings.instance_id,
        checks={"postgres": check_postgres, "redis": check_redis},
    )
    return app


# The routes of a process with only the common parts.
ROUTES = [
    web.get("/healthz", healthz),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics_handler),
]


def create_app(settings: Settings, service: str = "common") -> web.Application:
    """Only what every process has: resources, auth, share revocations, health, metrics."""
    app = base_app(settings, service)
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            redis_ctx,
            auth_ctx,  # after Postgres: it reads api_tokens
            revocations_ctx,  # after auth: it drops revoked shares from its cache
        ]
    )
    app.on_shutdown.append(mark_draining)
    app.add_routes(ROUTES)
    return app
