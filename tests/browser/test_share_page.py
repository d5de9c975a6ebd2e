"""The read-only page of a share link, `/s/<token>`, in headless chromium at two widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser.conftest import Stack

EXPECT_TIMEOUT_MS = 15_000


async def _rpc(http: aiohttp.ClientSession, url: str, method: str, params: Any) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with http.post(url + "/api/acp", json=body) as resp:
        reply = await resp.json()
    assert "result" in reply, reply
    return reply["result"]


@pytest.mark.parametrize("width", [1280, 390])
async def test_share_page_is_live_and_read_only(
    browser: Any, stack: Stack, artifacts_dir: Path, width: int
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with aiohttp.ClientSession() as http:
        new = await _rpc(http, stack.origin, "session/new", {"workspaceId": "default"})
        sid = new["sessionId"]
        await _rpc(
            http, stack.origin, "session/prompt", {"sessionId": sid, "prompt": "first"}
        )
        context = await browser.new_context(viewport={"width": width, "height": 800})
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
            # the dashboard's Share button makes the link, on the origin it was opened at
            await page.goto(f"{stack.origin}/#ws=default&session={sid}")
            await expect(page.locator("body[data-ready=true]")).to_have_count(1)
            await page.get_by_test_id("share").click()
            share_url = page.get_by_test_id("share-url")
            await expect(share_url).to_be_visible()
            url = await share_url.input_value()
            assert url.startswith(f"{stack.origin}/s/routa_share_")
            await page.goto(url)
            await expect(page.locator("body[data-ready=true]")).to_have_count(1)
            await expect(page.get_by_test_id("stream-status")).to_have_text("live")
            await expect(page.get_by_test_id("session-id")).to_have_text(sid)
            conversation = page.get_by_test_id("conversation")
            await expect(conversation.get_by_test_id("user-message")).to_have_text(
                ["first"]
            )
            await expect(conversation.get_by_test_id("agent-message")).to_have_text(
                ["echo: first"]
            )
            # read-only: nothing that writes, and no other session or workspace
            for testid in (
                "prompt-form",
                "cancel",
                "share",
                "session-list",
                "side-panel",
            ):
                await expect(page.get_by_test_id(testid)).to_be_hidden()
            # live: a turn run elsewhere shows up
            await _rpc(
                http,
                stack.origin,
                "session/prompt",
                {"sessionId": sid, "prompt": "second"},
            )
            await expect(conversation.get_by_test_id("agent-message")).to_have_text(
                ["echo: first", "echo: second"]
            )
            await page.screenshot(path=str(artifacts_dir / f"share-{width}.png"))
            # revoked: the stream ends and is refused from then on
            async with http.get(f"{stack.origin}/api/sessions/{sid}/shares") as resp:
                [share] = (await resp.json())["shares"]
            share_id = share["shareId"]
            async with http.delete(
                f"{stack.origin}/api/sessions/{sid}/shares/{share_id}"
            ) as resp:
                assert resp.status == 200
            await expect(page.get_by_test_id("error-text")).to_contain_text("revoked")
            await expect(page.get_by_test_id("stream-status")).not_to_have_text("live")
        finally:
            await context.close()
        assert foreign == []
        assert page_errors == []
