"""Redis channel and key names, defined once for every process and internal service.

Per-session names carry the session id inside literal braces so that it is a Redis Cluster
hash tag: sharded pub/sub can carry the fan-out without renaming anything. Keys that one
MULTI or Lua script touches together share a hash tag too, so they live in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Channels:
    """Names under one `REDIS_PREFIX`; tests use a unique prefix per run."""

    prefix: str = "routa"
    # per-session event channels on SPUBLISH/SSUBSCRIBE (Settings.sharded_pubsub)
    sharded: bool = False

    @property
    def base(self) -> str:
        return f"{self.prefix}:{VERSION}"

    # pub/sub, part of the public contract
    def session_events(self, session_id: str) -> str:
        return f"{self.base}:session:{{{session_id}}}:events"

    @property
    def session_events_pattern(self) -> str:
        return f"{self.base}:session:*:events"

    def workspace_sessions(self, workspace_id: str) -> str:
        return f"{self.base}:workspace:{workspace_id}:sessions"

    @property
    def workspace_sessions_pattern(self) -> str:
        return f"{self.base}:workspace:*:sessions"

    def workspace_notes(self, workspace_id: str) -> str:
        return f"{self.base}:workspace:{workspace_id}:notes"

    @property
    def workspace_notes_pattern(self) -> str:
        return f"{self.base}:workspace:*:notes"

    def workspace_tasks(self, workspace_id: str) -> str:
        return f"{self.base}:workspace:{workspace_id}:tasks"

    @property
    def workspace_tasks_pattern(self) -> str:
        return f"{self.base}:workspace:*:tasks"

    # stream of JSON-RPC requests from internal services
    @property
    def commands(self) -> str:
        return f"{self.base}:commands"

    @property
    def commands_group(self) -> str:
        return "gateways"

    # between gateway instances (internal to the product)
    def gateway_rpc(self, instance_id: str) -> str:
        return f"{self.base}:gateway:{instance_id}:rpc"

    def gateway_control(self, instance_id: str) -> str:
        return f"{self.base}:gateway:{instance_id}:control"

    @property
    def share_revocations(self) -> str:
        """Pub/sub: a share link was revoked; every process drops it and ends its streams."""
        return f"{self.base}:shares:revoked"

    def reply(self, token: str) -> str:
        return f"{self.base}:reply:{token}"

    # cache, never the source of truth
    @property
    def cache_base(self) -> str:
        return f"{self.base}:cache"

    # Each list scope (one workspace, or every workspace: a list without `workspaceId`) has
    # its generation and its lists hash. A write bumps its workspace's and the unscoped ones
    # together (MULTI, Lua), so every one of them keeps the hash tag `{sessions}`: one slot
    # on a Redis Cluster. Spreading them over slots would split that script.
    def cache_sessions_generation(self, workspace_id: str | None) -> str:
        return f"{self.cache_base}:{{sessions}}:gen:{_list_scope(workspace_id)}"

    def cache_sessions_lists(self, workspace_id: str | None) -> str:
        return f"{self.cache_base}:{{sessions}}:lists:{_list_scope(workspace_id)}"

    @property
    def cache_invalidations(self) -> str:
        """Pub/sub: a process that changed cached data says so here, so in-process copies drop."""
        return f"{self.cache_base}:invalidations"

    @property
    def cache_invalidations_sharded(self) -> str:
        """Sharded pub/sub on a Redis Cluster: the same message, in the slot of the keys it
        invalidates (`{sessions}`), so it is published on the node that runs the
        invalidation, where the in-process caches listen."""
        return f"{self.cache_base}:{{sessions}}:invalidations"

    @staticmethod
    def cache_sessions_invalidation(workspace_id: str) -> bytes:
        """The message on the invalidation channels: the lists of this workspace (and the
        unscoped ones) changed. Anything else heard there drops every in-process list."""
        return b"ws:" + workspace_id.encode()

    @staticmethod
    def cache_sessions_invalidated(message: bytes) -> str | None:
        """The workspace a `cache_sessions_invalidation` message names; None: not one."""
        if not message.startswith(b"ws:"):
            return None
        try:
            return message[3:].decode()
        except UnicodeDecodeError:
            return None

    def idempotency(self, workspace_id: str, key: str) -> str:
        return f"{self.base}:idem:{workspace_id}:{key}"


def _list_scope(workspace_id: str | None) -> str:
    """`ws:<id>` for one workspace, `all` for lists of every workspace (never a clash)."""
    return "all" if workspace_id is None else f"ws:{workspace_id}"
