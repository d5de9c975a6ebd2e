"""Which MCP servers a session may hand its agent (session/new's `mcpServers`).

Agents start the stdio MCP servers they are given, so a stdio entry from a request is
command execution: refused unless ALLOW_CUSTOM_COMMANDS is set. HTTP/SSE entries reach
only URLs under an MCP_ALLOW_URLS prefix. The operator's own servers (MCP_SERVERS) are
named by a string in the list and expanded when the agent starts. The row keeps the
list as checked (strings and entries); every agent start checks it again, so a resume
never hands over anything the current policy refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from shared.errors import BadRequest
from shared.settings import Settings

FIELD = "mcpServers"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    meta: dict[str, Any] | None = Field(default=None, alias="_meta", exclude=True)


class NameValue(_Entry):
    name: Text
    value: Text


class StdioServer(_Entry):
    """ACP McpServerStdio: a command the agent runs."""

    type: Literal["stdio"] | None = Field(default=None, exclude=True)
    name: Name
    command: Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]
    args: list[Text] = []
    env: list[NameValue] = []


class UrlServer(_Entry):
    """ACP HttpMcpServer / SseMcpServer: a URL the agent connects to."""

    type: Literal["http", "sse"]
    name: Name
    url: Text
    headers: list[NameValue] = []


def _parse_entry(value: object, loc: str) -> StdioServer | UrlServer:
    """One entry's shape; -32602 naming the field."""
    if not isinstance(value, dict):
        raise BadRequest(
            f"Invalid {loc}: an MCP server is an object or the name of a configured one"
        )
    model: type[StdioServer] | type[UrlServer]
    if "command" in value:
        model = StdioServer
    elif "url" in value or "type" in value:
        model = UrlServer
    else:
        raise BadRequest(
            f"Invalid {loc}: an MCP server needs command (stdio) or type and url"
            " (http/sse)"
        )
    try:
        return model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join([loc, *(str(p) for p in first["loc"])])
        if first["type"] == "missing":
            raise BadRequest(f"Invalid {where}: required") from err
        raise BadRequest(f"Invalid {where}: {first['msg']}") from err


def _http_url(raw: str) -> URL | None:
    """An absolute http(s) URL with a host, else None."""
    try:
        url = URL(raw)
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host or not url.is_absolute():
        return None
    return url


def _under(url: URL, prefix: URL) -> bool:
    """Same scheme, host and port; the path starts with the prefix's at a `/`."""
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    base = prefix.raw_path
    if base.endswith("/"):
        return url.raw_path.startswith(base)
    return url.raw_path == base or url.raw_path.startswith(base + "/")


def _entry_wire(entry: StdioServer | UrlServer) -> dict[str, Any]:
    return entry.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class McpPolicy:
    """The operator's MCP rules, read once from the settings."""

    allow_stdio: bool = False
    allow_urls: tuple[URL, ...] = ()
    named: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> McpPolicy:
        """ValueError naming the setting when MCP_ALLOW_URLS or MCP_SERVERS is malformed."""
        prefixes: list[URL] = []
        for raw in (settings.mcp_allow_urls or "").split(","):
            if not raw.strip():
                continue
            url = _http_url(raw.strip())
            if url is None:
                raise ValueError(
                    f"MCP_ALLOW_URLS: {raw.strip()!r} is not an http(s) URL with a host"
                )
            prefixes.append(url)
        return cls(
            allow_stdio=settings.allow_custom_commands,
            allow_urls=tuple(prefixes),
            named=_named_servers(settings.mcp_servers),
        )

    def url_allowed(self, raw: str) -> URL | None:
        """The URL as the agent will get it when an allow-list prefix covers it."""
        url = _http_url(raw)
        if url is None:
            return None
        # an encoded `/`, `\` or `.` may mean another path once the server decodes it
        lowered = url.raw_path.lower()
        if any(code in lowered for code in ("%2f", "%5c", "%2e")):
            return None
        if any(_under(url, prefix) for prefix in self.allow_urls):
            return url
        return None

    def check(self, value: object) -> list[str | dict[str, Any]]:
        """The list to store for a session: names of configured servers, checked entries.

        -32602 naming mcpServers (and the entry) for anything malformed or not allowed.
        """
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest(f"Invalid {FIELD}: must be a list")
        out: list[str | dict[str, Any]] = []
        names: set[str] = set()
        for i, item in enumerate(value):
            loc = f"{FIELD}.{i}"
            if isinstance(item, str):
                if item not in self.named:
                    known = ", ".join(sorted(self.named)) or "none"
                    raise BadRequest(
                        f"Invalid {loc}: no MCP server named {item!r} is configured"
                        f" (MCP_SERVERS has: {known})"
                    )
                name = str(self.named[item]["name"])
                out.append(item)
            else:
                entry = _parse_entry(item, loc)
                if isinstance(entry, StdioServer):
                    if not self.allow_stdio:
                        raise BadRequest(
                            f"Invalid {loc}: stdio MCP servers (command) from a request"
                            " are disabled (set ALLOW_CUSTOM_COMMANDS, or name a server"
                            " configured in MCP_SERVERS)"
                        )
                    wire = _entry_wire(entry)
                else:
                    url = self.url_allowed(entry.url)
                    if url is None:
                        raise BadRequest(
                            f"Invalid {loc}.url: {entry.url!r} is not under an allowed"
                            " prefix (MCP_ALLOW_URLS)"
                        )
                    wire = _entry_wire(entry)
                    wire["url"] = str(url)
                name = entry.name
                out.append(wire)
            if name in names:
                raise BadRequest(f"Invalid {loc}: duplicate MCP server name {name!r}")
            names.add(name)
        return out

    def for_agent(self, stored: list[Any]) -> list[dict[str, Any]]:
        """A stored list checked again and expanded into ACP entries for the agent."""
        return [
            dict(self.named[item]) if isinstance(item, str) else item
            for item in self.check(stored)
        ]


def _named_servers(raw: str | None) -> dict[str, dict[str, Any]]:
    """MCP_SERVERS: a JSON object, or the path of a file holding one."""
    if not raw or not raw.strip():
        return {}
    text = raw
    if not raw.lstrip().startswith(("{", "[")):
        try:
            text = Path(raw.strip()).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"MCP_SERVERS: cannot read {raw.strip()}: {err}") from err
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"MCP_SERVERS: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError("MCP_SERVERS: must be a JSON object of name -> MCP server")
    named: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            value = {"name": name, **value}
        try:
            entry = _parse_entry(value, f"MCP_SERVERS.{name}")
        except BadRequest as err:
            raise ValueError(str(err).removeprefix("Invalid ")) from err
        named[name] = _entry_wire(entry)
    return named
