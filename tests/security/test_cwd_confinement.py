"""A session's cwd and its agent's files stay inside its own workspace (issue 12, defect 1).

Real gateway, real echo agent, tokens scoped to one workspace each. The gateway's DATA_DIR
lies inside a "checkout" directory, as when the run command starts in a repository that a
workspace then registers as its codebase.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.common.keys import HUB, SETTINGS
from services.gateway import confine
from services.gateway.app import create_app
from services.gateway.confine import safe_segment
from tests.security.confine_support import (
    new_session,
    refused,
    rpc,
    session_count,
    turn_text,
)
from tests.security.conftest import TOKEN_A, TOKEN_B


@pytest.fixture
async def gw(make_settings, aiohttp_client, auth_tokens, tmp_path):
    settings = make_settings(
        auth_tokens=auth_tokens, data_dir=tmp_path / "checkout" / ".routa"
    )
    settings.cwd_root.mkdir(parents=True)
    client = await aiohttp_client(create_app(settings))
    async with asyncio.timeout(10):
        await client.app[HUB].connected.wait()
    return client


async def add_codebase(pool, workspace_id: str, path) -> None:
    await pool.execute(
        "INSERT INTO codebases (workspace_id, id, repo_path, position)"
        " VALUES ($1, $2, $3, (SELECT count(*) FROM codebases WHERE workspace_id = $1))",
        workspace_id,
        uuid.uuid4().hex,
        str(path),
    )


async def test_cwd_and_fs_stay_in_the_own_workspace(gw, pool, two_workspaces, tmp_path):
    ws_a, ws_b = two_workspaces
    root = gw.app[SETTINGS].cwd_root
    # B keeps a secret in its session's directory
    sid_b = await new_session(gw, pool, {"workspaceId": ws_b}, TOKEN_B)
    assert await turn_text(gw, pool, sid_b, "/write secret.txt B-ONLY", TOKEN_B) == (
        "written"
    )
    secret = root / ws_b / sid_b / "secret.txt"
    assert secret.read_text() == "B-ONLY"

    # A cannot take the root, B's directory, or a way around to it as its cwd
    own = root / ws_a
    own.mkdir()
    (own / "to-b").symlink_to(root / ws_b)
    (own / "loop").symlink_to(own / "loop")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for cwd in (
        root,
        root / ws_b,
        secret.parent,
        f"{own}/../{ws_b}",
        own / "to-b",
        own / "to-b" / sid_b,
        own / "loop",
        outside,
        "/",
        tmp_path / "checkout",
    ):
        message = await refused(
            gw, "session/new", {"workspaceId": ws_a, "cwd": str(cwd)}, TOKEN_A
        )
        assert message.startswith("Invalid cwd"), (cwd, message)
    assert await session_count(pool, ws_a) == 0  # nothing half-written

    # inside its own directory: allowed; fs requests cannot leave it, symlink or not
    work = own / "work"
    sid_a = await new_session(
        gw, pool, {"workspaceId": ws_a, "cwd": str(work)}, TOKEN_A
    )
    (work / "peek").symlink_to(secret.parent)
    (work / "loop").symlink_to(work / "loop")
    for path in (
        str(secret),
        "peek/secret.txt",
        f"../../{ws_b}/{sid_b}/secret.txt",
        "loop",
    ):
        text = await turn_text(gw, pool, sid_a, f"/read {path}", TOKEN_A)
        assert "B-ONLY" not in text, path
        assert "Invalid params" in text, (path, text)
    written = await turn_text(
        gw, pool, sid_a, "/write peek/secret.txt A-WAS-HERE", TOKEN_A
    )
    assert "written" not in written
    assert secret.read_text() == "B-ONLY"

    # session/load's cwd follows the same rule
    message = await refused(
        gw, "session/load", {"sessionId": sid_a, "cwd": str(root)}, TOKEN_A
    )
    assert message.startswith("Invalid cwd")
    loaded = await rpc(
        gw, "session/load", {"sessionId": sid_a, "cwd": str(work)}, TOKEN_A
    )
    assert loaded["result"]["sessionId"] == sid_a

    # a codebase registered on A is open to A's sessions; B's codebase is not
    repo_a, repo_b = tmp_path / "repo-a", tmp_path / "repo-b"
    for repo in (repo_a, repo_b):
        (repo / "src").mkdir(parents=True)
    await add_codebase(pool, ws_a, repo_a)
    await add_codebase(pool, ws_b, repo_b)
    in_repo = await new_session(
        gw, pool, {"workspaceId": ws_a, "cwd": str(repo_a / "src")}, TOKEN_A
    )
    cwd = await pool.fetchval(
        "SELECT cwd FROM sessions WHERE session_id = $1", uuid.UUID(in_repo)
    )
    assert cwd == str((repo_a / "src").resolve())
    message = await refused(
        gw, "session/new", {"workspaceId": ws_a, "cwd": str(repo_b)}, TOKEN_A
    )
    assert message.startswith("Invalid cwd")

    # registering the cwd root as a codebase opens nothing
    await add_codebase(pool, ws_a, root)
    for cwd in (root, root / ws_b):
        message = await refused(
            gw, "session/new", {"workspaceId": ws_a, "cwd": str(cwd)}, TOKEN_A
        )
        assert message.startswith("Invalid cwd")
    # a codebase holding the data directory (the checkout): the cwd is allowed, but the
    # agent's fs requests still cannot reach another workspace's files
    checkout = tmp_path / "checkout"
    await add_codebase(pool, ws_a, checkout)
    sid_c = await new_session(
        gw, pool, {"workspaceId": ws_a, "cwd": str(checkout)}, TOKEN_A
    )
    peek = f".routa/workspaces/{ws_b}/{sid_b}/secret.txt"
    text = await turn_text(gw, pool, sid_c, f"/read {peek}", TOKEN_A)
    assert "B-ONLY" not in text
    assert "Invalid params" in text
    text = await turn_text(gw, pool, sid_c, f"/write {peek} A-WAS-HERE", TOKEN_A)
    assert "written" not in text
    assert secret.read_text() == "B-ONLY"


def test_workspace_directories_never_collide():
    names = ["a b", "a_b", "a/b", "équipe", "üquipe", "", ".", "..", "_", "x" * 300]
    segments = [safe_segment(n) for n in names]
    assert len(set(segments)) == len(names)
    assert safe_segment("ws-a.1_B") == "ws-a.1_B"  # plain ids keep their name
    for seg in segments:
        assert "/" not in seg
        assert seg not in ("", ".", "..")
        assert len(seg.encode()) < 255


def test_terminal_cwds_use_the_same_fence(make_settings, tmp_path):
    """What a terminal (or any tool the gateway runs) gets as its working directory."""
    settings = make_settings(data_dir=tmp_path / "data")
    own = settings.cwd_root / "ws-a"
    cwd = own / "session"
    (cwd / "sub").mkdir(parents=True)
    (settings.cwd_root / "ws-b").mkdir()
    (cwd / "out").symlink_to(settings.cwd_root / "ws-b")
    fence = confine.fence(settings, "ws-a", cwd)
    assert fence.cwd_for(None) == cwd
    assert fence.cwd_for("sub") == cwd / "sub"
    assert fence.cwd_for(str(cwd / "sub")) == cwd / "sub"
    for bad in ("/", "..", "../../ws-b", "out", str(settings.cwd_root), "a\x00b"):
        with pytest.raises(confine.Outside):
            fence.cwd_for(bad)
