"""Where the dev origin (origin.py) and the nginx config (nginx.py) send each path."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: URL  # scheme://host:port, no path


@dataclass(frozen=True, slots=True)
class Upstreams:
    gateway: Backend
    query: Backend

    def for_path(self, path: str) -> Backend:
        """`/api/acp` and below go to the gateway; everything else to the query service."""
        if path == "/api/acp" or path.startswith("/api/acp/"):
            return self.gateway
        return self.query

    def all(self) -> tuple[Backend, Backend]:
        return (self.gateway, self.query)
