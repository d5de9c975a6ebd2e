"""Where a session's agent may work: its cwd, its files, the user it runs as.

One rule for every path a session names (session/new's and session/load's `cwd`, fs
requests, terminal cwds): after resolving symlinks, a cwd lies inside the session's own
workspace directory (`AGENT_CWD_ROOT/<workspace>/…`) or inside a codebase `repoPath`
registered on that workspace; anything else is refused. Paths the agent asks for must
lie inside the session's cwd and never in another workspace's directory or in the rest
of DATA_DIR (agent homes, embedded database files), even when the cwd contains them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import BadRequest
from shared.settings import Settings

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
SEGMENT_MAX = 120


def safe_segment(value: str) -> str:
    """A directory name made from an id, one-to-one (workspace ids are free text).

    An id that is already a plain name is used as is; any other id gets a hash suffix
    after `~`, a character plain names never contain, so `a b` and `a_b` (or two Unicode
    names) never share a directory.
    """
    if (
        value not in ("", ".", "..")
        and len(value) <= SEGMENT_MAX
        and not _UNSAFE.search(value)
    ):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', value)[:SEGMENT_MAX]}~{digest}"


def workspace_dir(settings: Settings, workspace_id: str) -> Path:
    """The directory that holds a workspace's session cwds (resolved)."""
    return settings.cwd_root / safe_segment(workspace_id)


def is_within(path: Path, base: Path) -> bool:
    """`path` is `base` or below it (both already resolved)."""
    return path == base or base in path.parents


class Outside(ValueError):
    """A path a session may not use; the message says why."""


def resolved(path: str) -> Path:
    """`path` with symlinks and `..` resolved; Outside when it cannot be (a loop)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:
        raise Outside(f"cannot resolve {path}: {err}") from err


@dataclass(frozen=True, slots=True)
class Fence:
    """What one session's agent may touch through the gateway (fs requests, terminals).

    `cwd` is the session's cwd; inside any of `guarded` (the cwd root, DATA_DIR) only
    `own` (the session's workspace directory) is open, whatever the cwd contains.
    """

    cwd: Path
    own: Path
    guarded: tuple[Path, ...]

    def allows(self, target: Path) -> bool:
        if not is_within(target, self.cwd):
            return False
        return not any(
            is_within(target, g) and not is_within(target, self.own)
            for g in self.guarded
        )

    def resolve(self, path: str) -> Path:
        """An absolute `path` resolved (symlinks, ..) when allowed; else Outside."""
        if not path or not os.path.isabs(path) or "\x00" in path:
            raise Outside("path must be absolute")
        target = resolved(path)
        if not self.allows(target):
            raise Outside("path is outside the session cwd")
        return target

    def cwd_for(self, path: str | None) -> Path:
        """A terminal's (or any tool's) working directory: the session cwd when none is
        given, else `path` (relative: to the session cwd) resolved inside the fence."""
        if path is None:
            return self.cwd
        if "\x00" in path:
            raise Outside("path contains a NUL character")
        return self.resolve(str(self.cwd / path))  # an absolute `path` replaces cwd


def fence(settings: Settings, workspace_id: str, cwd: Path) -> Fence:
    """The fence of a session of `workspace_id` working in `cwd`."""
    return Fence(
        cwd=cwd.resolve(),
        own=workspace_dir(settings, workspace_id),
        guarded=(settings.cwd_root, settings.data_dir.resolve()),
    )


def check_cwd(
    settings: Settings,
    workspace_id: str,
    cwd: str,
    repo_paths: Iterable[str] = (),
    *,
    field: str = "cwd",
) -> Path:
    """The resolved `cwd` when the rule allows it for `workspace_id`; else -32602 naming `field`."""
    if not cwd or "\x00" in cwd or not os.path.isabs(cwd):
        raise BadRequest(f"Invalid {field}: must be an absolute path, got {cwd!r}")
    try:
        target = resolved(cwd)
    except Outside as err:
        raise BadRequest(f"Invalid {field}: {err}") from err
    own = workspace_dir(settings, workspace_id)
    if is_within(target, own):
        return target
    guarded = (settings.cwd_root, settings.data_dir.resolve())
    if not any(is_within(target, g) for g in guarded):
        for repo in repo_paths:
            if not repo or not os.path.isabs(repo) or "\x00" in repo:
                continue
            try:
                if is_within(target, resolved(repo)):
                    return target
            except Outside:
                continue
    raise BadRequest(
        f"Invalid {field}: {cwd} is outside workspace {workspace_id!r}"
        f" (its directory {own} or one of its codebases)"
    )


@dataclass(frozen=True, slots=True)
class AgentUser:
    """The unprivileged user agents run as (AGENT_USER)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def agent_user(settings: Settings) -> AgentUser | None:
    """AGENT_USER looked up; None when unset. ValueError when it cannot be used."""
    name = settings.agent_user
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"AGENT_USER: no such user {name!r}") from None
    if entry.pw_uid == 0:
        raise ValueError(f"AGENT_USER: {name!r} is root; name an unprivileged user")
    euid = os.geteuid()
    if euid != 0 and euid != entry.pw_uid:
        raise ValueError(
            f"AGENT_USER: running agents as {name!r} needs the gateway to run as root"
            f" (it runs as uid {euid})"
        )
    groups = tuple(os.getgrouplist(name, entry.pw_gid))
    return AgentUser(name, entry.pw_uid, entry.pw_gid, groups)


def warn_if_root(settings: Settings) -> None:
    """One warning at start when agents would run as root."""
    if not settings.agent_user and os.geteuid() == 0:
        logger.warning(
            "the gateway runs as root and AGENT_USER is unset: agents run as root"
        )


def hand_over(user: AgentUser, paths: Iterable[Path]) -> None:
    """Give the agent user the directories it works in (its HOME, its cwd)."""
    for path in paths:
        os.chown(path, user.uid, user.gid)


def owned_dirs(
    settings: Settings, workspace_id: str, home: Path, cwd: Path
) -> tuple[Path, ...]:
    """The agent's HOME, and its cwd when it lies in its workspace's directory.

    A codebase belongs to whoever registered it, and the cwd root to the gateway: those
    keep their owner.
    """
    dirs = [home]
    if is_within(cwd.resolve(), workspace_dir(settings, workspace_id)):
        dirs.append(cwd)
    return tuple(dirs)


# Runs as root, drops to the agent user, then becomes the command (same pid): the
# preexec_fn-free way that works on every event loop (uvloop has no user=/group=).
_AS_USER = (
    "import os,sys;u,g=int(sys.argv[1]),int(sys.argv[2]);"
    "os.setgroups([int(x) for x in sys.argv[3].split(',') if x]);"
    "os.setresgid(g,g,g);os.setresuid(u,u,u);os.execvp(sys.argv[4],sys.argv[4:])"
)


def user_argv(user: AgentUser | None, argv: list[str]) -> list[str]:
    """The argv that runs `argv` as `user` (agents, and whatever they start through us)."""
    if user is None or user.uid == os.geteuid():
        return argv
    groups = ",".join(str(g) for g in user.groups)
    ids = [str(user.uid), str(user.gid), groups]
    return [sys.executable, "-I", "-S", "-c", _AS_USER, *ids, *argv]
