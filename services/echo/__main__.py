"""`python -m services.echo` / `routa-echo-agent`: the offline echo ACP agent on stdio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from services.echo.server import serve_stdio


def main() -> None:
    """Serve ACP on stdio; stdout carries nothing but ACP, logs go to stderr."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_stdio())


if __name__ == "__main__":
    main()
