"""`python -m services.echo` / `routa-echo-agent`: the offline echo ACP agent on stdio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from services.echo.server import serve_stdio
from shared.cli import parser


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ACP on stdio; stdout carries nothing but ACP, logs go to stderr."""
    parser(
        "routa-echo-agent",
        "The built-in offline ACP agent: speaks ACP (JSON-RPC lines) on stdin/stdout "
        "until stdin closes. The gateway starts it for provider echo; typing at it by "
        "hand is rarely useful.",
    ).parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_stdio())


if __name__ == "__main__":
    main()
