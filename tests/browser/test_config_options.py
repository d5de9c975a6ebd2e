"""The agent's config options on the dashboard: shown for the open session, and settable.

Echo offers one, `model` (a select: echo-small, echo-large). The page reads the list from the
session's context, changes it with `session/set_config_option`, and follows a change another
client made (the session's lifecycle message names the new model).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.browser.conftest import Stack
from tests.browser.rpc import rpc

# generous: a 2-core machine shared with other suites
EXPECT_TIMEOUT_MS = 30_000
WAIT_SECONDS = 30.0

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]


async def _model_option(http: aiohttp.ClientSession, session_id: str) -> dict[str, Any]:
    async with http.get(f"/api/sessions/{session_id}/context") as resp:
        assert resp.status == 200, await resp.text()
        context = await resp.json()
    options = context.get("configOptions") or []
    return next((o for o in options if o.get("id") == "model"), {})


async def _wait_for_model(
    http: aiohttp.ClientSession, session_id: str, value: str
) -> None:
    """The stored option list says `value` (it is written in the background after session/new)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while (await _model_option(http, session_id)).get("currentValue") != value:
        assert loop.time() < deadline, await _model_option(http, session_id)
        await asyncio.sleep(0.1)


async def test_the_model_option_shows_and_changes_both_ways(
    browser: Any, stack: Stack
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with aiohttp.ClientSession(stack.origin) as http:
        async with http.post("/api/workspaces", json={"title": "Options"}) as resp:
            assert resp.status == 201, await resp.text()
            workspace_id = (await resp.json())["workspace"]["id"]
        created = await rpc(
            http,
            "session/new",
            {"workspaceId": workspace_id, "name": "Options", "provider": "echo"},
        )
        session_id = created["sessionId"]
        await _wait_for_model(http, session_id, "echo-small")

        context = await browser.new_context(viewport={"width": 1280, "height": 820})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            await page.goto(f"{stack.origin}/#ws={workspace_id}&session={session_id}")
            await expect(page.get_by_test_id("stream-status")).to_have_text("live")

            # the option, under its name, with its current value and the choices offered
            field = page.get_by_test_id("config-field")
            await expect(field).to_have_count(1)
            await expect(field).to_contain_text("Model")
            model = page.locator("[data-testid=config-option][data-config-id=model]")
            await expect(model).to_have_value("echo-small")
            await expect(model.locator("option")).to_have_text(
                ["Echo small", "Echo large"]
            )
            await expect(page.get_by_role("combobox", name="Model")).to_have_count(1)

            # changed on the page: the agent and the stored session take it
            await model.select_option("echo-large")
            await _wait_for_model(http, session_id, "echo-large")
            await expect(model).to_have_value("echo-large")
            await expect(model).to_be_enabled()
            async with http.get(f"/api/sessions/{session_id}/context") as resp:
                assert (await resp.json())["model"] == "echo-large"

            # changed by another client: the page follows
            await rpc(
                http,
                "session/set_config_option",
                {"sessionId": session_id, "configId": "model", "value": "echo-small"},
            )
            await expect(model).to_have_value("echo-small")
            assert errors == []
        finally:
            await context.close()
