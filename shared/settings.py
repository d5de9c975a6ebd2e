"""Process configuration from the environment, one model for both processes."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redisconn import is_cluster_url, parse_cluster_url


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    """A URL with one of `schemes`; the message names the scheme, never the URL (passwords)."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in schemes:
        names = [f"{s}://" for s in schemes]
        wanted = ", ".join(names[:-1]) + f" or {names[-1]}"
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"must start with {wanted}, got {got}")
    return value


def agent_env_names(value: str | None) -> tuple[str, ...]:
    """`A, B,C` → ("A", "B", "C"); empty items dropped."""
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


class Settings(BaseSettings):
    """Every variable of docs/configuration.md; unprefixed, defaults that work on a developer machine."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/routa"
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 0  # 0 = the process's own default (gateway 8001, query 8002)
    instance_id: str = Field(default_factory=_default_instance_id)
    redis_prefix: str = "routa"
    data_dir: Path = Path("./.routa")
    default_provider: str = "echo"
    opencode_bin: str | None = None
    claude_agent_acp_bin: str | None = None
    codex_acp_bin: str | None = None
    gemini_bin: str | None = None
    # per provider: names of variables copied from this process's environment into its
    # agents (credentials such as ANTHROPIC_API_KEY); never the service's own settings
    agent_env_claude: str | None = None
    agent_env_opencode: str | None = None
    agent_env_codex: str | None = None
    agent_env_gemini: str | None = None
    agent_env_custom: str | None = None
    # how claude agents get their model API credentials: `env` (AGENT_ENV_CLAUDE copies
    # ANTHROPIC_* variables into the agent) or `gateway` (ACP authenticate, method gateway)
    agent_auth_claude: Literal["env", "gateway"] = "env"
    # an opencode.json copied into each opencode agent's private config directory
    opencode_config: Path | None = None
    agent_cwd_root: Path | None = None
    agent_home: Path | None = None
    prompt_timeout: float = 300.0
    cancel_watchdog: float = 10.0
    # timeout of every request to an agent except the prompt itself
    agent_request_timeout: float = 30.0
    agent_idle_timeout: float = 900.0
    idempotency_window: float = 30.0
    lease_ttl: float = 15.0
    drain_grace: float = 30.0
    max_sessions: int = 200
    auth_tokens: str | None = None
    # AUTH: "auto" = on with AUTH_TOKENS or once any token was ever created in api_tokens
    # (revoking them all keeps it on); "on" = required even before the first token;
    # "off" = the one way to turn it off again
    auth: Literal["auto", "on", "off"] = "auto"
    allow_custom_commands: bool = False
    # the unprivileged user agents run as when the gateway runs as root
    agent_user: str | None = None
    # MCP servers: URL prefixes a session may name (comma-separated), and the operator's
    # named servers (a JSON object name -> ACP McpServer entry, or a file holding one)
    mcp_allow_urls: str | None = None
    mcp_servers: str | None = None
    # per-session event channels on SPUBLISH/SSUBSCRIBE; unset: on for a redis+cluster://
    # REDIS_URL, off otherwise (every process of a deployment must agree)
    redis_sharded_pubsub: bool | None = None
    shutdown_timeout: float = 3.0
    log_format: str = "console"  # "json" in deployments
    log_level: str = "INFO"
    pg_pool_min: int = 1
    pg_pool_max: int = 10
    # --- auth and limits ---
    # api_tokens lookups are cached this long; a revoke takes effect within it
    auth_cache_ttl: float = 5.0
    # the origin share links point at (https://routa.example.com); unset: the origin the
    # client used, from the Host or a proxy's X-Forwarded-Proto/-Host headers
    public_url: str | None = None
    # requests per second per token (token bucket per process); unset: 50/s when auth
    # is on, off when it is not; 0 turns it off
    rate_limit: float | None = None
    rate_limit_burst: int | None = None  # bucket size; unset: twice the rate
    max_prompt_bytes: int = 256 * 1024  # JSON size of session/prompt's `prompt`
    max_subscribers: int = 100  # event streams per session per gateway instance
    # event streams per client (bearer token, else remote address) per instance; 0 = no cap
    max_client_streams: int = 50
    # a stream whose unsent bytes (queued + the socket's write buffer) exceed this, or
    # whose oldest unsent event is older than STREAM_BACKLOG_SECONDS, is closed; the
    # client reconnects with Last-Event-ID and replays from the log
    stream_backlog_bytes: int = 4 * 1024 * 1024
    stream_backlog_seconds: float = 5.0
    # unsent bytes held for all streams of the process; over it the streams with the
    # largest, then oldest, backlog are closed first
    streams_buffer_bytes: int = 64 * 1024 * 1024
    # bytes of one line an agent writes on stdout; a longer one stops the agent
    agent_max_line: int = 50 * 1024 * 1024
    # ACP client terminals: bytes of output kept per terminal (an agent's
    # outputByteLimit can only lower it), terminals held at once per session
    terminal_output_limit: int = 1024 * 1024
    max_terminals: int = 8
    # bytes of agent events waiting for Postgres, per gateway process; beyond it the
    # agents' stdout is not read (back-pressure) until stored events make room
    event_buffer_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # --- webhooks ---
    # where webhook URLs may point: comma-separated host names, IPs and CIDRs, plus the
    # word `public` for every public address; unset = public addresses only
    webhook_allow: str | None = None
    # seconds between a delivery worker's looks for due deliveries when it found none
    webhook_poll_interval: float = Field(default=1.0, gt=0)
    # --- event retention ---
    # days after which the events of a closed session are deleted (its row stays);
    # unset: events are kept for ever
    event_retention_days: float | None = Field(default=None, gt=0)
    # seconds between two retention passes of a query instance
    event_retention_interval: float = Field(default=3600.0, gt=0)

    @field_validator("allow_custom_commands", mode="before")
    @classmethod
    def _truthy(cls, value: object) -> object:
        # ALLOW_CUSTOM_COMMANDS=1 / yes / true all mean on; an empty value means off.
        if isinstance(value, str):
            return value.strip().lower() in {"1", "true", "yes", "on"}
        return value

    @field_validator("agent_auth_claude", mode="before")
    @classmethod
    def _agent_auth(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().lower() or "env"
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_mode(cls, value: object) -> object:
        # AUTH=OFF / On work too; an empty value is the default
        if isinstance(value, str):
            return value.strip().lower() or "auto"
        return value

    @field_validator(
        "agent_env_claude",
        "agent_env_opencode",
        "agent_env_codex",
        "agent_env_gemini",
        "agent_env_custom",
    )
    @classmethod
    def _agent_env(cls, value: str | None) -> str | None:
        # refused at start, loudly: a listed secret of the service itself is a mistake
        for name in agent_env_names(value):
            if name in SERVICE_VARIABLES or name.startswith(SERVICE_PREFIXES):
                raise ValueError(
                    f"{name} is the service's own configuration and is never given to agents"
                )
            if not name.replace("_", "").isalnum():
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    def agent_env_for(self, provider_id: str) -> tuple[str, ...]:
        """The variable names AGENT_ENV_<PROVIDER> copies into that provider's agents."""
        return agent_env_names(getattr(self, f"agent_env_{provider_id}", None))

    @property
    def cwd_root(self) -> Path:
        """Every session cwd must be inside this directory."""
        root = self.agent_cwd_root or (self.data_dir / "workspaces")
        return root.resolve()

    @property
    def agents_home_root(self) -> Path:
        return (self.data_dir / "agents").resolve()

    @property
    def sharded_pubsub(self) -> bool:
        """Whether session events travel on sharded pub/sub (see redis_sharded_pubsub)."""
        if self.redis_sharded_pubsub is not None:
            return self.redis_sharded_pubsub
        return is_cluster_url(self.redis_url)

    def port_or(self, default: int) -> int:
        return self.port or default

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        return _check_url(value, ("postgresql", "postgres"))

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        _check_url(
            value, ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
        )
        if is_cluster_url(value):
            parse_cluster_url(value)  # ValueError names the bad part, never the URL
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("must be console or json")
        return value


def _describe(error: ErrorDetails) -> str:
    """`PROMPT_TIMEOUT='abc': Input should be a valid number, …` (URLs are not echoed)."""
    name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if name.endswith("_URL") or "input" not in error:
        return f"{name}: {message}"
    value = error["input"]
    shown = value if len(str(value)) <= 80 else f"{str(value)[:80]}…"
    return f"{name}={shown!r}: {message}"


def load_settings(program: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment; a malformed value is one line on stderr, exit 2.

    Every command starts with this, so a typo in a variable never ends in a traceback.
    `overrides` are the command's flags (shared/cli.py), which win over the environment.
    """
    try:
        return Settings(**(overrides or {}))
    except ValidationError as err:
        for error in err.errors():
            sys.stderr.write(f"{program}: invalid setting {_describe(error)}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None


# the service's own variables (every setting above) and the clients' ones: an AGENT_ENV_*
# list naming one of them is refused
SERVICE_VARIABLES = frozenset(name.upper() for name in Settings.model_fields) | {
    "TEST_DATABASE_URL",
    "TEST_REDIS_URL",
}
SERVICE_PREFIXES = ("PG", "REDIS", "AGENT_ENV_")
