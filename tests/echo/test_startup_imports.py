"""The echo agent starts for every echo session: its imports stay those of an ACP agent."""

from __future__ import annotations

import subprocess
import sys


def test_echo_agent_does_not_import_the_services_stack() -> None:
    # settings, Redis and Postgres clients cost about 0.1 s of start-up per session and
    # nothing in the agent uses them
    probe = (
        "import sys, services.echo.__main__; "
        "print(','.join(m for m in ('shared.settings', 'redis', 'asyncpg', 'aiohttp') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
