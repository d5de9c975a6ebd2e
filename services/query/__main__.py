"""`python -m services.query` / `routa-query`."""

from __future__ import annotations

from services.common.runner import run
from services.query.app import DEFAULT_PORT, create_app


def main() -> None:
    run(create_app, DEFAULT_PORT, "query")


if __name__ == "__main__":
    main()
