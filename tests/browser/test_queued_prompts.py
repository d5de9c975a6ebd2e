"""The dashboard's queued-prompt indicator: prompts sent during a turn wait in the queue."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser.conftest import Stack

EXPECT_TIMEOUT_MS = 15_000


async def _rpc(http: aiohttp.ClientSession, method: str, params: dict) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with http.post("/api/acp", json=body) as resp:
        reply = await resp.json()
    assert "result" in reply, reply
    return reply["result"]


@pytest.mark.parametrize("width", [1280, 390])
async def test_prompts_sent_during_a_turn_queue_and_can_be_dropped(
    browser: Any, stack: Stack, artifacts_dir: Path, width: int
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with aiohttp.ClientSession(stack.origin) as http:
        async with http.post("/api/workspaces", json={"title": "Queue ws"}) as resp:
            assert resp.status == 201, await resp.text()
            workspace_id = (await resp.json())["workspace"]["id"]
        created = await _rpc(
            http, "session/new", {"workspaceId": workspace_id, "name": "Queue"}
        )
        session_id = created["sessionId"]

        context = await browser.new_context(viewport={"width": width, "height": 860})
        page = await context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda err: page_errors.append(str(err)))
        running: asyncio.Task[Any] | None = None
        try:
            await page.goto(stack.origin + "/")
            await expect(page.locator("body[data-ready=true]")).to_have_count(1)
            await page.get_by_test_id("workspace-select").select_option(workspace_id)
            item = page.locator(
                f'[data-testid=session-item][data-session-id="{session_id}"]'
            )
            await expect(item.get_by_test_id("session-acp-status")).to_have_text(
                "ready"
            )
            await item.click()
            await expect(page.get_by_test_id("stream-status")).to_have_text("live")

            # another client's long turn runs; what this page sends meanwhile queues
            running = asyncio.create_task(
                _rpc(
                    http,
                    "session/prompt",
                    {"sessionId": session_id, "prompt": "/slow 30"},
                )
            )
            await expect(item.get_by_test_id("session-status")).to_have_text("active")
            queue = page.get_by_test_id("queue-status")
            await expect(queue).to_be_hidden()
            for text in ("drop this one", "keep this one"):
                await page.get_by_test_id("prompt-input").fill(text)
                await page.get_by_test_id("prompt-send").click()
            await expect(queue).to_have_text("2 queued")
            await expect(queue).to_be_visible()
            markers = page.get_by_test_id("prompt-queued")
            await expect(markers).to_have_count(2)
            await expect(markers.nth(0)).to_contain_text("position 1")
            await expect(markers.nth(1)).to_contain_text("position 2")
            await page.screenshot(path=str(artifacts_dir / f"queue-{width}.png"))

            # Drop takes the first one off the queue; it never runs
            await markers.nth(0).get_by_test_id("drop-queued").click()
            await expect(queue).to_have_text("1 queued")
            await expect(markers.nth(0)).to_contain_text("dropped")

            # the running turn is cancelled: the kept prompt runs, the queue empties
            await page.get_by_test_id("cancel").click()
            assert (await running) == {"stopReason": "cancelled"}
            conversation = page.get_by_test_id("conversation")
            await expect(
                conversation.get_by_test_id("agent-message").last
            ).to_have_text("echo: keep this one")
            await expect(queue).to_be_hidden()
            await expect(markers.nth(1)).to_contain_text("started")
            texts = await conversation.get_by_test_id("user-message").all_inner_texts()
            assert "drop this one" not in texts
            assert texts[-1] == "keep this one"
            assert page_errors == []
        finally:
            if running is not None and not running.done():
                running.cancel()
            await context.close()
