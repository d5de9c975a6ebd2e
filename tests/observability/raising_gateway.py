"""A real gateway process with one extra JSON-RPC method, `test/raise`, that fails with an
unexpected exception: how an operator sees a bug in the logs (tests/observability)."""

from __future__ import annotations

from typing import NoReturn

from aiohttp import web

from services.common.runner import run
from services.gateway.app import DEFAULT_PORT, create_app
from services.gateway.keys import METHODS
from services.gateway.rpc import RpcCall
from shared.settings import Settings


async def raise_from_deep_inside(call: RpcCall) -> NoReturn:
    raise RuntimeError("a bug for the log test")


def factory(settings: Settings) -> web.Application:
    app = create_app(settings)
    app[METHODS].add("test/raise", raise_from_deep_inside)
    return app


if __name__ == "__main__":
    run(factory, DEFAULT_PORT, "gateway")
