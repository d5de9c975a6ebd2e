"""The dashboard at `/`: its assets over HTTP, and a person's path through it in headless chromium."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from services.common.middleware import app_middleware
from services.query import dashboard
from tests.browser.conftest import REPO_ROOT, Stack

EXPECT_TIMEOUT_MS = 15_000


# ---------- assets (no browser needed) ----------


@pytest.fixture
async def assets_client(aiohttp_client: Any) -> Any:
    # the error middleware every process installs, and the dashboard's two routes
    app = web.Application(middlewares=[app_middleware])
    app.add_routes(
        [web.get("/", dashboard.index), web.get("/static/{path:.+}", dashboard.asset)]
    )
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", "data-testid"),
        ("/static/app.js", "text/javascript", "session/prompt"),
        ("/static/app.css", "text/css", ".bubble"),
    ],
)
async def test_assets_are_served_with_types_and_no_cache(
    assets_client: Any, path: str, content_type: str, marker: str
) -> None:
    resp = await assets_client.get(path)
    assert resp.status == 200
    assert resp.content_type == content_type
    assert resp.headers["Cache-Control"] == "no-cache"
    assert marker in await resp.text()


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/../dashboard.py",
        "/static/..%2Fdashboard.py",
        "/static/..%2F..%2Fstatic%2Fapp.js",
        "/static/.hidden.js",
        "/static/index.py",
    ],
)
async def test_unknown_or_escaping_assets_are_404_json(
    assets_client: Any, path: str
) -> None:
    resp = await assets_client.get(URL(path, encoded=True))
    assert resp.status == 404
    assert "error" in await resp.json()


def test_resolve_asset_stays_inside_the_static_dir(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.js").write_text("x")
    (tmp_path / "secret.js").write_text("x")
    assert dashboard.resolve_asset(static, "a.js") == static / "a.js"
    assert dashboard.resolve_asset(static, "../secret.js") is None
    assert dashboard.resolve_asset(static, str(tmp_path / "secret.js")) is None


def test_page_references_only_local_assets() -> None:
    html = (dashboard.STATIC_DIR / "index.html").read_text()
    for needle in ("http://", "https://", "//cdn", "innerHTML"):
        assert needle not in html
    js = (dashboard.STATIC_DIR / "app.js").read_text()
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in js  # every piece of data goes through textContent


# ---------- the page in chromium ----------


@pytest.mark.browser
@pytest.mark.integration
async def test_echo_conversation_with_permission(
    browser: Any, stack: Stack, artifacts_dir: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    context = await browser.new_context(viewport={"width": 1400, "height": 860})
    page = await context.new_page()
    foreign: list[str] = []
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))

    async def only_local(route: Any) -> None:
        if route.request.url.startswith(stack.origin) or route.request.url.startswith(
            "data:"
        ):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    try:
        await page.goto(stack.origin + "/")
        await expect(page.locator("body[data-ready=true]")).to_have_count(1)
        await expect(page.get_by_test_id("workspace-select")).to_have_value("default")
        await expect(page.get_by_test_id("list-status")).to_have_text("live")

        # create an echo session; the list shows it and follows its agent to ready
        await page.get_by_test_id("provider-select").select_option("echo")
        await page.get_by_test_id("new-session-name").fill("Browser check")
        await page.get_by_test_id("new-session").click()
        item = page.get_by_test_id("session-item").filter(has_text="Browser check")
        await expect(item).to_have_count(1)
        await expect(item.get_by_test_id("session-provider")).to_have_text("echo")
        await expect(item.get_by_test_id("session-acp-status")).to_have_text("ready")
        await expect(page.get_by_test_id("session-title")).to_have_text("Browser check")
        await expect(page.get_by_test_id("stream-status")).to_have_text("live")

        # a prompt: the user's bubble, one joined agent bubble, the end of the turn
        conversation = page.get_by_test_id("conversation")
        await page.get_by_test_id("prompt-input").fill("hello world")
        await page.get_by_test_id("prompt-send").click()
        await expect(conversation.get_by_test_id("user-message")).to_have_text(
            ["hello world"]
        )
        await expect(conversation.get_by_test_id("agent-message")).to_have_text(
            ["echo: hello world"]
        )
        await expect(conversation.get_by_test_id("turn-complete")).to_have_count(1)
        await page.screenshot(path=str(artifacts_dir / "dashboard-echo.png"))

        # a permission prompt: approve it, the agent says so
        await page.get_by_test_id("prompt-input").fill("/permission")
        await page.get_by_test_id("prompt-input").press("Enter")
        approve = conversation.get_by_test_id("permission-approve")
        await expect(approve).to_be_visible()
        await expect(
            conversation.get_by_test_id("tool-call").get_by_test_id("tool-status")
        ).to_have_text("waiting")
        await page.screenshot(path=str(artifacts_dir / "dashboard-permission.png"))
        await approve.click()
        await expect(conversation.get_by_test_id("agent-message").last).to_have_text(
            "approved"
        )
        await expect(approve).to_have_count(0)  # the prompt is answered, buttons gone
        await expect(conversation.get_by_test_id("permission-outcome")).to_have_text(
            "approved: Allow"
        )
        await expect(conversation.get_by_test_id("turn-complete")).to_have_count(2)
        await page.screenshot(path=str(artifacts_dir / "dashboard-approved.png"))

        # the other renderers: thought, tool call patched to completed, plan, raw JSON
        await _prompt(page, "/think pondering deeply")
        await expect(conversation.get_by_test_id("thought")).to_contain_text(
            "pondering deeply"
        )
        await expect(conversation.get_by_test_id("agent-message").last).to_have_text(
            "echo: pondering deeply"
        )
        await _prompt(page, "/tool")
        tool = conversation.get_by_test_id("tool-call").filter(
            has_text="Read README.md"
        )
        await expect(tool.get_by_test_id("tool-status")).to_have_text("completed")
        await expect(tool.get_by_test_id("tool-locations")).to_contain_text("README.md")
        await _prompt(page, "/plan")
        await expect(page.get_by_test_id("plan-status")).to_have_text(["completed"] * 3)
        await _prompt(page, "/unknown")
        await expect(conversation.get_by_test_id("unknown-event")).to_contain_text(
            "echo_custom"
        )
        await expect(conversation.get_by_test_id("turn-complete")).to_have_count(6)

        # the side panel lists the session's notes and tasks
        session_id = await page.get_by_test_id("session-id").text_content()
        await _add_note_and_task(stack, session_id)
        await page.get_by_test_id("refresh-side").click()
        await expect(page.get_by_test_id("note")).to_contain_text(["Findings"])
        await expect(page.get_by_test_id("task")).to_contain_text(["Ship the page"])

        # mode switch goes through session/set_mode and is persisted
        await page.get_by_test_id("mode-select").select_option("plan")
        await expect(conversation.get_by_test_id("mode-changed").last).to_have_text(
            "mode: plan"
        )
        await expect(item.get_by_test_id("session-name")).to_have_text("Browser check")
        await expect(page.get_by_test_id("session-meta")).to_contain_text("idle")
        await expect(page.get_by_test_id("error")).to_be_hidden()
        await page.screenshot(path=str(artifacts_dir / "dashboard-full.png"))
        _maybe_update_docs_screenshot(artifacts_dir / "dashboard-full.png")

        assert page_errors == []
        assert foreign == []
    finally:
        await context.close()


async def _add_note_and_task(stack: Stack, session_id: str) -> None:
    """Through the origin's REST routes, as another client of the same workspace would."""
    async with aiohttp.ClientSession(stack.origin) as http:
        note = {
            "workspaceId": "default",
            "sessionId": session_id,
            "title": "Findings",
            "content": "echo answers every prompt",
        }
        async with http.post("/api/notes", json=note) as resp:
            assert resp.status == 201, await resp.text()
        task = {
            "workspaceId": "default",
            "sessionId": session_id,
            "title": "Ship the page",
            "objective": "A dashboard people can read",
        }
        async with http.post("/api/tasks", json=task) as resp:
            assert resp.status == 201, await resp.text()


async def _prompt(page: Any, text: str) -> None:
    await page.get_by_test_id("prompt-input").fill(text)
    await page.get_by_test_id("prompt-send").click()


def _maybe_update_docs_screenshot(shot: Path) -> None:
    """docs/dashboard.png is committed: written when missing or with UPDATE_DOCS_SCREENSHOT=1."""
    target = REPO_ROOT / "docs" / "dashboard.png"
    if target.exists() and os.environ.get("UPDATE_DOCS_SCREENSHOT") != "1":
        return
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(shot.read_bytes())


@pytest.mark.browser
@pytest.mark.integration
async def test_list_follows_other_clients_and_cancel_interrupts(
    browser: Any, stack: Stack, artifacts_dir: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with aiohttp.ClientSession(stack.origin) as http:
        async with http.post("/api/workspaces", json={"title": "Browser ws"}) as resp:
            assert resp.status == 201, await resp.text()
            workspace_id = (await resp.json())["workspace"]["id"]

        context = await browser.new_context(viewport={"width": 1400, "height": 860})
        page = await context.new_page()
        try:
            await page.goto(stack.origin + "/")
            await expect(page.locator("body[data-ready=true]")).to_have_count(1)
            await page.get_by_test_id("workspace-select").select_option(workspace_id)
            await expect(page.get_by_test_id("list-status")).to_have_text("live")
            await expect(page.get_by_test_id("session-empty")).to_be_visible()

            # another client creates, renames and deletes: the list follows live
            created = await _rpc(
                http,
                "session/new",
                {"workspaceId": workspace_id, "name": "From elsewhere"},
            )
            session_id = created["sessionId"]
            item = page.locator(
                f'[data-testid=session-item][data-session-id="{session_id}"]'
            )
            await expect(item.get_by_test_id("session-name")).to_have_text(
                "From elsewhere"
            )
            async with http.patch(
                f"/api/sessions/{session_id}", json={"name": "Renamed elsewhere"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            await expect(item.get_by_test_id("session-name")).to_have_text(
                "Renamed elsewhere"
            )

            # a long turn does not block the page; Cancel ends it
            await item.click()
            await expect(page.get_by_test_id("stream-status")).to_have_text("live")
            await _prompt(page, "/slow 30")
            await expect(page.get_by_test_id("turn-status")).to_be_visible()
            await expect(item.get_by_test_id("session-status")).to_have_text("active")
            await page.get_by_test_id("cancel").click()
            await expect(page.get_by_test_id("turn-complete")).to_have_text(
                ["turn complete: cancelled"]
            )
            await expect(page.get_by_test_id("turn-status")).to_be_hidden()
            await page.screenshot(path=str(artifacts_dir / "dashboard-cancelled.png"))

            async with http.delete(f"/api/sessions/{session_id}") as resp:
                assert resp.status == 200, await resp.text()
            await expect(item).to_have_count(0)
            await expect(page.get_by_test_id("no-session")).to_be_visible()
        finally:
            await context.close()


async def _rpc(http: aiohttp.ClientSession, method: str, params: dict) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with http.post("/api/acp", json=body) as resp:
        reply = await resp.json()
    assert "result" in reply, reply
    return reply["result"]
