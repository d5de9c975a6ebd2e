"""`python -m services.query` / `routa-query`."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.runner import run
from services.query.app import DEFAULT_PORT, create_app


def main(argv: Sequence[str] | None = None) -> None:
    run(
        create_app,
        DEFAULT_PORT,
        "query",
        "The query service: REST reads and writes of sessions, notes, tasks and "
        "workspaces, their event streams, the dashboard and the API documents.",
        argv,
    )


if __name__ == "__main__":
    main()
