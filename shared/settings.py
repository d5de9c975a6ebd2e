"""Process configuration from the environment (api.md §1), one model for both processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every variable of api.md §1; unprefixed, defaults that work on a developer machine."""

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
    agent_cwd_root: Path | None = None
    agent_home: Path | None = None
    prompt_timeout: float = 300.0
    cancel_watchdog: float = 10.0
    # timeout of every request to an agent except the prompt itself (api.md §5.3)
    agent_request_timeout: float = 30.0
    agent_idle_timeout: float = 900.0
    idempotency_window: float = 30.0
    lease_ttl: float = 15.0
    drain_grace: float = 30.0
    max_sessions: int = 200
    auth_tokens: str | None = None
    allow_custom_commands: bool = False
    redis_sharded_pubsub: bool = False
    shutdown_timeout: float = 3.0
    log_format: str = "console"  # "json" in deployments
    log_level: str = "INFO"
    pg_pool_min: int = 1
    pg_pool_max: int = 10
    # --- auth and limits (api.md §8) ---
    # api_tokens lookups are cached this long; a revoke takes effect within it
    auth_cache_ttl: float = 5.0
    # requests per second per token (token bucket per process); unset: 50/s when auth
    # is on, off when it is not; 0 turns it off
    rate_limit: float | None = None
    rate_limit_burst: int | None = None  # bucket size; unset: twice the rate
    max_prompt_bytes: int = 256 * 1024  # JSON size of session/prompt's `prompt`
    max_subscribers: int = 100  # event streams per session per gateway instance
    # bytes of one line an agent writes on stdout; a longer one stops the agent
    agent_max_line: int = 50 * 1024 * 1024
    # bytes of agent events waiting for Postgres, per gateway process; beyond it the
    # agents' stdout is not read (back-pressure) until stored events make room
    event_buffer_bytes: int = Field(default=32 * 1024 * 1024, gt=0)

    @field_validator("allow_custom_commands", mode="before")
    @classmethod
    def _truthy(cls, value: object) -> object:
        # ALLOW_CUSTOM_COMMANDS=1 / yes / true all mean on; an empty value means off.
        if isinstance(value, str):
            return value.strip().lower() in {"1", "true", "yes", "on"}
        return value

    @property
    def cwd_root(self) -> Path:
        """Every session cwd must be inside this directory."""
        root = self.agent_cwd_root or (self.data_dir / "workspaces")
        return root.resolve()

    @property
    def agents_home_root(self) -> Path:
        return (self.data_dir / "agents").resolve()

    def port_or(self, default: int) -> int:
        return self.port or default
