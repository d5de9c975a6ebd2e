"""The API explorer at /api/docs in headless chromium: both documents render, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.browser.conftest import Stack

EXPECT_TIMEOUT_MS = 15_000


async def test_explorer_assets_are_the_bundle_and_nothing_else(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.origin + "/api/docs") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        assert "https://" not in page
        assert "http://" not in page
        async with http.get(
            stack.origin + "/api-docs-assets/swagger-ui-bundle.js"
        ) as r:
            assert r.status == 200
            assert r.content_type == "text/javascript"
        for name in ("index.html", "..%2Fapp.py", "swagger-ui.js.map"):
            async with http.get(stack.origin + "/api-docs-assets/" + name) as r:
                assert r.status == 404, name
                assert set(await r.json()) == {"error"}


async def test_explorer_renders_the_operations_of_both_documents(
    browser: Any, stack: Stack, artifacts_dir: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    foreign: list[str] = []
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))

    async def only_local(route: Any) -> None:
        if route.request.url.startswith((stack.origin, "data:")):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    try:
        await page.goto(f"{stack.origin}/api/docs")
        # the query service's document: its operations, by method and path
        sessions = page.locator(
            ".opblock-get .opblock-summary-path", has_text="/api/sessions/{session_id}"
        )
        await expect(sessions.first).to_be_visible()
        await expect(
            page.locator(".opblock-post .opblock-summary-path", has_text="/api/tasks")
        ).not_to_have_count(0)
        await expect(page.locator(".info .title")).to_contain_text("query service")
        await page.screenshot(path=str(artifacts_dir / "api-docs-query.png"))
        # the gateway's document, one choice away: POST and GET /api/acp
        await page.locator(".topbar select").select_option(
            label="gateway (JSON-RPC over HTTP, SSE)"
        )
        await expect(page.locator(".info .title")).to_contain_text("ACP gateway")
        acp = page.locator(".opblock-summary-path", has_text="/api/acp")
        await expect(page.locator(".opblock-post").filter(has=acp)).to_have_count(1)
        await expect(page.locator(".opblock-get").filter(has=acp)).not_to_have_count(0)
        # an operation opens with its responses: the stream is text/event-stream
        get_acp = page.locator(".opblock-get .opblock-summary-path").filter(
            has_text="/api/acp"
        )
        await get_acp.first.click()
        media = page.locator('select:has(option[value="text/event-stream"])')
        await expect(media.first).to_have_value("text/event-stream")
        await expect(
            page.locator(".parameters .parameter__name", has_text="sessionId")
        ).to_be_visible()
        await page.screenshot(path=str(artifacts_dir / "api-docs-gateway.png"))
    finally:
        await context.close()
    assert foreign == [], f"the explorer fetched from outside: {foreign}"
    assert page_errors == [], page_errors
