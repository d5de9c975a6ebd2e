"""Command-line flags shared by every entry point (argparse, from the standard library).

Settings stay environment-first: a flag only overrides the variable of the same name, and
`--help` / `--version` return before anything is read, connected or bound.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

DISTRIBUTION = "routa-sessions"
SETTINGS_EPILOG = (
    "Every setting is an environment variable (docs/configuration.md); "
    "a flag overrides the variable of the same name."
)


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def parser(
    prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A parser with `--version`; `--help` comes with argparse."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    p.add_argument("--version", action="version", version=f"{prog} {version()}")
    return p


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}")
    return port


def service_parser(
    prog: str, description: str, default_port: int
) -> argparse.ArgumentParser:
    """The flags of a long-running process (gateway, query service)."""
    p = parser(prog, description, SETTINGS_EPILOG)
    p.add_argument("--host", help="address to listen on (env HOST, default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=_port,
        help=f"port to listen on (env PORT, default {default_port})",
    )
    p.add_argument(
        "--instance-id",
        help="this instance's unique name (env INSTANCE_ID, default <hostname>-<pid>)",
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
        help="root log level (env LOG_LEVEL, default INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=["console", "json"],
        help="console lines or one JSON object per line (env LOG_FORMAT)",
    )
    return p


def overrides(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The given flags among `names`, as Settings fields (unset flags leave the env)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


SERVICE_FLAGS = ("host", "port", "instance_id", "log_level", "log_format")
