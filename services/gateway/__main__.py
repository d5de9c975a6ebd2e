"""`python -m services.gateway` / `routa-gateway`."""

from __future__ import annotations

from services.common.runner import run
from services.gateway.app import DEFAULT_PORT, create_app


def main() -> None:
    run(create_app, DEFAULT_PORT, "gateway")


if __name__ == "__main__":
    main()
