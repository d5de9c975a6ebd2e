"""`python -m services.gateway` / `routa-gateway`."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.runner import run
from services.gateway.app import DEFAULT_PORT, create_app


def main(argv: Sequence[str] | None = None) -> None:
    run(
        create_app,
        DEFAULT_PORT,
        "gateway",
        "The ACP gateway: JSON-RPC on POST /api/acp, event streams on GET /api/acp, "
        "one agent process per live session.",
        argv,
    )


if __name__ == "__main__":
    main()
