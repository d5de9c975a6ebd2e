"""The dashboard at a desktop width and a phone width, in headless chromium.

A person's longer session: a plan, a failing prompt, an unknown event kind, a long turn to
cancel, notes and tasks written from the page, search across sessions and a transcript export.
Screenshots go to test-artifacts/ (git-ignored). One axe-core pass checks accessibility; axe
comes from the `axe-playwright-python` wheel, which ships axe.min.js (nothing is fetched).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser.conftest import Stack
from tests.browser.rpc import rpc

# generous: these pages run long conversations on a 2-core machine shared with other suites
EXPECT_TIMEOUT_MS = 30_000
WIDTHS = [1280, 390]
HEIGHT = 820

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    # each test drives 10-20 turns through a real browser: past the suite's default under load
    pytest.mark.timeout(360),
]


@dataclass
class Page:
    page: Any
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


async def _open(browser: Any, stack: Stack, width: int, url: str = "/") -> Page:
    context = await browser.new_context(viewport={"width": width, "height": HEIGHT})
    page = await context.new_page()
    opened = Page(page)
    page.on("pageerror", lambda err: opened.errors.append(str(err)))

    async def only_local(route: Any) -> None:
        if route.request.url.startswith((stack.origin, "data:", "blob:")):
            await route.continue_()
        else:
            opened.foreign.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    await page.goto(stack.origin + url)
    return opened


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.origin) as session:
        yield session


async def _prompt(page: Any, text: str) -> None:
    await page.get_by_test_id("prompt-input").fill(text)
    await page.get_by_test_id("prompt-send").click()


TURN_ENDS = (
    "[data-testid=conversation] [data-testid=turn-complete],"
    " [data-testid=conversation] [data-testid=turn-error]"
)


async def _turn(page: Any, text: str) -> None:
    """Prompt and wait for that turn's end: a prompt sent while a turn runs is refused."""
    from playwright.async_api import expect

    ends = page.locator(TURN_ENDS)
    before = await ends.count()
    await _prompt(page, text)
    await expect(ends).to_have_count(before + 1)


async def _box(locator: Any) -> dict[str, float]:
    box = await locator.bounding_box()
    assert box is not None
    return dict(box)


async def _wider_than(page: Any, width: int) -> list[str]:
    """What sticks out to the right of the screen (for the failure message)."""
    found: list[str] = await page.evaluate(
        """(width) => [...document.querySelectorAll("body *")]
            .filter((n) => n.getBoundingClientRect().right > width + 0.5)
            .slice(0, 10)
            .map((n) => `${n.tagName}#${n.id}.${n.className} ${n.getBoundingClientRect().right}`)""",
        width,
    )
    return found


async def _assert_not_covered(page: Any, testid: str) -> None:
    """The element is on screen and the topmost thing at its centre (nothing lies over it)."""
    locator = page.get_by_test_id(testid)
    await locator.scroll_into_view_if_needed()
    on_top = await locator.evaluate(
        """(node) => {
            const r = node.getBoundingClientRect();
            const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
            return hit === node || node.contains(hit);
        }"""
    )
    assert on_top, f"{testid} is covered by another element"


@pytest.mark.parametrize("width", WIDTHS)
async def test_a_longer_session_reads_well(
    browser: Any, stack: Stack, artifacts_dir: Path, width: int
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    # a workspace with a long title: its name in the picker must not widen the page
    async with aiohttp.ClientSession(stack.origin) as http:
        title = "A workspace whose title is much longer than a phone is wide " * 2
        async with http.post("/api/workspaces", json={"title": title}) as resp:
            assert resp.status == 201, await resp.text()
    opened = await _open(browser, stack, width)
    page = opened.page
    try:
        await expect(page.locator("body[data-ready=true]")).to_have_count(1)
        await expect(page.get_by_test_id("list-status")).to_have_text("live")
        await page.get_by_test_id("provider-select").select_option("echo")
        await page.get_by_test_id("new-session-name").fill(f"Phone check {width}")
        await page.get_by_test_id("new-session").click()
        await expect(page.get_by_test_id("stream-status")).to_have_text("live")
        conversation = page.get_by_test_id("conversation")
        cancel = page.get_by_test_id("cancel")

        # nothing runs: Cancel is disabled
        await expect(cancel).to_be_disabled()

        # a plan is a card inside the conversation, not pinned over it
        await _turn(page, "/plan")
        await expect(page.get_by_test_id("plan-status")).to_have_text(["completed"] * 3)
        await expect(conversation.get_by_test_id("plan")).to_have_count(1)
        await expect(conversation.get_by_test_id("plan")).to_contain_text("3/3 done")
        for i in range(6):
            # one at a time: a prompt while a turn runs is refused
            await _prompt(page, f"message number {i} with a few more words to fill")
            await expect(conversation.get_by_test_id("turn-complete")).to_have_count(
                i + 2
            )
        await expect(cancel).to_be_disabled()
        # scrolled to the end, the plan card has scrolled away with the messages
        plan_box = await _box(conversation.get_by_test_id("plan"))
        conv_box = await _box(conversation)
        assert plan_box["y"] + plan_box["height"] <= conv_box["y"] + 1, (
            plan_box,
            conv_box,
        )

        # an unknown event kind is one compact line
        await _turn(page, "/unknown")
        unknown = conversation.get_by_test_id("unknown-event")
        await expect(unknown).to_contain_text("echo_custom")
        assert (await _box(unknown))["height"] < 40
        await expect(conversation.locator("pre.raw:visible")).to_have_count(0)

        # a failing prompt: the banner says it once
        await _turn(page, "/fail")
        banner = page.get_by_test_id("error-text")
        await expect(banner).to_contain_text("asked to fail")
        text = await banner.text_content() or ""
        assert text.count("asked to fail") == 1, text
        assert "[-32000]" not in text, text
        assert "(agent:" not in text, text
        await page.get_by_test_id("error").get_by_role("button").click()
        await expect(page.get_by_test_id("error")).to_be_hidden()

        # a long turn: Cancel is enabled while it runs, and disabled again after
        await _prompt(page, "/slow 30")
        await expect(cancel).to_be_enabled()
        await cancel.click()
        await expect(conversation.get_by_test_id("turn-complete").last).to_have_text(
            "turn complete: cancelled"
        )
        await expect(cancel).to_be_disabled()

        # notes and tasks: created and edited from the page
        await page.get_by_test_id("new-note").click()
        await page.get_by_test_id("note-title-input").fill("Finding")
        await page.get_by_test_id("note-content-input").fill("echo answers")
        await page.get_by_test_id("new-note-form-save").click()
        note = page.get_by_test_id("note").filter(has_text="Finding")
        await expect(note.get_by_test_id("note-content")).to_have_text("echo answers")
        await note.get_by_test_id("note-edit").click()
        await page.get_by_test_id("note-content-input").fill("echo answers, edited")
        await page.get_by_test_id("note-form-save").click()
        await expect(page.get_by_test_id("note-content")).to_have_text(
            ["echo answers, edited"]
        )

        await page.get_by_test_id("new-task").click()
        await page.get_by_test_id("task-title-input").fill("Ship it")
        await page.get_by_test_id("task-objective-input").fill("A readable page")
        await page.get_by_test_id("new-task-form-save").click()
        task = page.get_by_test_id("task").filter(has_text="Ship it")
        await expect(task.get_by_test_id("task-status")).to_have_text("pending")
        await task.get_by_test_id("task-edit").click()
        await page.get_by_test_id("task-title-input").fill("Ship it today")
        await page.get_by_test_id("task-status-input").select_option("IN_PROGRESS")
        await page.get_by_test_id("task-form-save").click()
        task = page.get_by_test_id("task").filter(has_text="Ship it today")
        await expect(task.get_by_test_id("task-status")).to_have_text("in_progress")

        # a bad edit keeps the form open with the server's message
        await task.get_by_test_id("task-edit").click()
        await page.get_by_test_id("task-objective-input").fill("   ")
        await page.get_by_test_id("task-form-save").click()
        await expect(page.get_by_test_id("task-form-error")).to_contain_text(
            "objective"
        )
        await page.get_by_test_id("task-form-cancel").click()
        await expect(page.get_by_test_id("task-form")).to_have_count(0)

        # the layout: readable conversation, prompt box free, nothing wider than the screen
        conv_box = await _box(conversation)
        assert conv_box["height"] >= 250, conv_box
        assert conv_box["width"] >= min(width, 900) * 0.4, conv_box
        await _assert_not_covered(page, "prompt-input")
        await _assert_not_covered(page, "prompt-send")
        prompt_box = await _box(page.get_by_test_id("prompt-form"))
        panel_box = await _box(page.get_by_test_id("side-panel"))
        if width < 900:
            # one column: notes and tasks come after the prompt box, never over it
            assert panel_box["y"] >= prompt_box["y"] + prompt_box["height"] - 1
        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, await _wider_than(page, width)
        await page.get_by_test_id("conversation").evaluate(
            "(node) => { node.scrollTop = node.scrollHeight; }"
        )
        await page.get_by_test_id("session-view").scroll_into_view_if_needed()
        await page.screenshot(path=str(artifacts_dir / f"dashboard-{width}.png"))
        await page.screenshot(
            path=str(artifacts_dir / f"dashboard-{width}-full.png"), full_page=True
        )
        assert opened.errors == []
        assert opened.foreign == []
    finally:
        await page.context.close()


async def _seed(http: aiohttp.ClientSession) -> tuple[str, str, str]:
    """A workspace of its own with two sessions; `zebra` is in a prompt and an answer of each."""
    async with http.post("/api/workspaces", json={"title": "Search"}) as resp:
        assert resp.status == 201, await resp.text()
        ws = (await resp.json())["workspace"]["id"]
    first = await rpc(http, "session/new", {"workspaceId": ws, "name": "Zoo"})
    second = await rpc(http, "session/new", {"workspaceId": ws, "name": "Farm"})
    await rpc(http, "session/prompt", {"sessionId": first["sessionId"], "prompt": "hi"})
    for i in range(12):
        await rpc(
            http,
            "session/prompt",
            {"sessionId": first["sessionId"], "prompt": f"filler line {i}"},
        )
    await rpc(
        http,
        "session/prompt",
        {"sessionId": first["sessionId"], "prompt": "the zebra & stripes"},
    )
    await rpc(
        http, "session/prompt", {"sessionId": second["sessionId"], "prompt": "a zebra"}
    )
    return ws, first["sessionId"], second["sessionId"]


@pytest.mark.parametrize("width", WIDTHS)
async def test_search_jumps_to_the_message_and_export_downloads(
    browser: Any,
    stack: Stack,
    http: aiohttp.ClientSession,
    artifacts_dir: Path,
    width: int,
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    ws, zoo, farm = await _seed(http)
    opened = await _open(browser, stack, width, f"/#ws={ws}")
    page = opened.page
    try:
        await expect(page.locator("body[data-ready=true]")).to_have_count(1)
        await page.get_by_test_id("search-input").fill("zebra")
        await page.get_by_test_id("search-input").press("Enter")
        hits = page.get_by_test_id("search-hit")
        # a prompt and an answer in Zoo, the same in Farm
        await expect(hits).to_have_count(4)
        await expect(page.get_by_test_id("search-summary")).to_contain_text("4 results")
        await expect(hits.first.locator("mark").first).to_have_text("zebra")
        # the snippet's escaping (&amp;) is undone for display, as text
        zoo_prompt = hits.filter(has_text="stripes").first
        await expect(zoo_prompt.get_by_test_id("search-hit-snippet")).to_contain_text(
            "zebra & stripes"
        )
        await expect(zoo_prompt.get_by_test_id("search-hit-session")).to_have_text(
            "Zoo"
        )
        await page.screenshot(path=str(artifacts_dir / f"dashboard-search-{width}.png"))

        # a hit opens its session and scrolls to its message
        event_id = await zoo_prompt.get_attribute("data-event-id")
        await zoo_prompt.get_by_test_id("search-hit-link").click()
        await expect(page.get_by_test_id("session-id")).to_have_text(zoo)
        found = page.locator(".conversation [data-found=true]")
        await expect(found).to_have_count(1)
        await expect(found).to_contain_text("the zebra & stripes")
        await expect(found).to_be_in_viewport()
        assert f"event={event_id}" in page.url

        # a hit in another session switches to it
        await (
            hits.filter(has_text="a zebra")
            .first.get_by_test_id("search-hit-link")
            .click()
        )
        await expect(page.get_by_test_id("session-id")).to_have_text(farm)
        await expect(page.locator(".conversation [data-found=true]")).to_contain_text(
            "zebra"
        )

        # nothing found
        await page.get_by_test_id("search-input").fill("okapi")
        await page.get_by_test_id("search-submit").click()
        await expect(page.get_by_test_id("search-summary")).to_have_text(
            "No results for “okapi”"
        )
        await expect(hits).to_have_count(0)
        await page.get_by_test_id("search-close").click()
        await expect(page.get_by_test_id("search-panel")).to_be_hidden()

        # export: the open session's transcript as a download, in each format
        await page.get_by_test_id("export").click()
        async with page.expect_download() as info:
            await page.get_by_test_id("export-markdown").click()
        download = await info.value
        assert download.suggested_filename == "Farm.md"
        text = Path(await download.path()).read_text()
        assert "a zebra" in text
        assert "echo: a zebra" in text.replace("\n", " ")
        await expect(page.get_by_test_id("export-menu")).not_to_have_attribute(
            "open", ""
        )
        await page.get_by_test_id("export").click()
        async with page.expect_download() as info:
            await page.get_by_test_id("export-jsonl").click()
        jsonl = Path(await (await info.value).path()).read_text().splitlines()
        assert any('"user_message"' in line for line in jsonl)
        await page.screenshot(path=str(artifacts_dir / f"dashboard-export-{width}.png"))
        assert opened.errors == []
        assert opened.foreign == []
    finally:
        await page.context.close()


SERIOUS = {"serious", "critical"}


async def test_axe_finds_no_serious_violations(
    browser: Any, stack: Stack, http: aiohttp.ClientSession, artifacts_dir: Path
) -> None:
    """axe-core over the page with a conversation, a permission prompt, search results and forms."""
    from axe_playwright_python.async_playwright import Axe
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    ws, zoo, _ = await _seed(http)
    opened = await _open(browser, stack, 1280, f"/#ws={ws}&session={zoo}")
    page = opened.page
    try:
        await expect(page.get_by_test_id("stream-status")).to_have_text("live")
        # the replay of the seeded turns first, then one turn at a time
        await expect(page.locator(TURN_ENDS)).to_have_count(14)
        await _turn(page, "/plan")
        await expect(page.get_by_test_id("plan-status")).to_have_text(["completed"] * 3)
        await _turn(page, "/think a thought")
        await _turn(page, "/tool")
        await _turn(page, "/unknown")
        await _prompt(page, "/permission")
        await expect(page.get_by_test_id("permission-approve")).to_be_visible()
        await page.get_by_test_id("search-input").fill("zebra")
        await page.get_by_test_id("search-submit").click()
        await expect(page.get_by_test_id("search-hit")).to_have_count(4)
        await page.get_by_test_id("new-note").click()
        await page.get_by_test_id("new-task").click()
        await page.get_by_test_id("export").click()
        await page.screenshot(path=str(artifacts_dir / "dashboard-axe.png"))

        results = await Axe().run(page)
        violations = results.response["violations"]
        serious = [v for v in violations if v.get("impact") in SERIOUS]
        report = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
            for v in serious
        ]
        assert serious == [], report
        # axe really ran over this page: it checked rules and found the page's controls
        assert len(results.response["passes"]) > 10
    finally:
        await page.context.close()
