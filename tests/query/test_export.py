"""GET /api/sessions/{id}/export: the whole log, streamed page by page, in three formats."""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp
import pytest

from services.gateway.app import create_app as create_gateway
from services.query import export as export_mod
from services.query.app import create_app
from shared.db import session_events
from tests.gateway.conftest import wait_fanout_ready
from tests.gateway.rpcutil import ok
from tests.query.sessions_support import add_events, chunk, make_session


def user(text: str) -> dict[str, Any]:
    return {"sessionUpdate": "user_message", "content": {"type": "text", "text": text}}


def thought(text: str) -> dict[str, Any]:
    return {
        "sessionUpdate": "agent_thought_chunk",
        "content": {"type": "text", "text": text},
    }


DONE = {"sessionUpdate": "turn_complete", "stopReason": "end_turn"}
TOOL = {
    "sessionUpdate": "tool_call",
    "toolCallId": "call-1",
    "title": "Read notes.txt",
    "kind": "read",
    "status": "pending",
    "locations": [{"path": "/work/notes.txt", "line": 3}],
}
TOOL_DONE = {
    "sessionUpdate": "tool_call_update",
    "toolCallId": "call-1",
    "status": "completed",
    "content": [
        {"type": "content", "content": {"type": "text", "text": "line with ``` fence"}}
    ],
}
PLAN = {
    "sessionUpdate": "plan",
    "entries": [
        {"content": "look around", "priority": "high", "status": "completed"},
        {"content": "write it", "priority": "medium", "status": "in_progress"},
        {"content": "ship", "priority": "low", "status": "pending"},
    ],
}
CONVERSATION = [
    {"sessionUpdate": "acp_status", "status": "ready"},
    user("what is in notes.txt?"),
    thought("let me "),
    thought("look"),
    TOOL,
    TOOL_DONE,
    PLAN,
    chunk("It says ", "m1"),
    chunk("hello.", "m1"),
    {"sessionUpdate": "usage_update", "used": 5, "size": 100},
    {"sessionUpdate": "echo_custom", "value": "unknown-kind-marker"},
    DONE,
]


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await aiohttp_client(create_app(make_settings()))


async def export(client, sid: str, fmt: str | None) -> aiohttp.ClientResponse:
    params = {"format": fmt} if fmt is not None else {}
    resp = await client.get(f"/api/sessions/{sid}/export", params=params)
    assert resp.status == 200, await resp.text()
    return resp


async def test_jsonl_is_the_history_byte_for_byte_across_pages(
    client, pool, workspace_id, monkeypatch
) -> None:
    """Each line is a stored event exactly as /history returns it; the log is read in
    pages of PAGE events (never all at once), and pages join without a gap."""
    monkeypatch.setattr(export_mod, "PAGE", 7)
    reads: list[int | None] = []
    real_after = session_events.after

    async def counting_after(conn, sid, after_id, limit=None):
        reads.append(limit)
        return await real_after(conn, sid, after_id, limit)

    monkeypatch.setattr(session_events, "after", counting_after)
    sid = await make_session(pool, workspace_id, name="Log")
    odd = [
        chunk('naïve ☃ \u2028 \x00 \\ "quoted" </script>'),
        {"sessionUpdate": "whatever", "nested": {"a": [1, 2.5, None, True]}},
    ]
    await add_events(pool, sid, (CONVERSATION + odd) * 3)  # 42 events
    resp = await export(client, sid, "jsonl")
    assert resp.content_type == "application/x-ndjson"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="Log.jsonl"'
    body = await resp.read()
    # 42 events in pages of 7, the last one ending the loop
    assert reads == [7] * 6
    assert body.endswith(b"\n")
    lines = body[:-1].split(b"\n")
    assert len(lines) == 42
    history = await (await client.get(f"/api/sessions/{sid}/history")).read()
    assert history == b'{"history":[' + b",".join(lines) + b"]}"


async def test_markdown_reads_like_the_conversation(client, pool, workspace_id) -> None:
    sid = await make_session(pool, workspace_id, name="Notes check")
    await add_events(pool, sid, CONVERSATION)
    resp = await export(client, sid, "markdown")
    assert resp.content_type == "text/markdown"
    assert resp.charset == "utf-8"
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="Notes check.md"'
    )
    text = await resp.text()
    assert text.startswith("# Notes check\n\n")
    assert f"Session `{sid}`" in text
    expected_in_order = [
        "### User\n\nwhat is in notes.txt?\n\n",
        "<details><summary>Thinking</summary>\n\nlet me look\n\n</details>",
        "**Tool call:** Read notes.txt · `read` · _pending_",
        "- /work/notes.txt:3",
        "**Tool call update:** Read notes.txt · _completed_",
        "````\nline with ``` fence\n````",
        "**Plan**\n\n- [x] look around\n- [ ] write it _(in progress)_\n- [ ] ship _(pending)_",
        "### Agent\n\nIt says hello.\n\n",
        "_turn complete: end_turn_",
    ]
    at = 0
    for part in expected_in_order:
        found = text.find(part, at)
        assert found >= 0, (part, text[at:])
        at = found + len(part)
    # not conversation: status, usage, kinds we do not know
    assert "unknown-kind-marker" not in text
    assert "usage" not in text
    assert "ready" not in text


async def test_html_is_a_page_with_everything_escaped(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id, name="<b>bold</b> & co")
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    await add_events(
        pool,
        sid,
        [
            user(hostile),
            thought(hostile),
            {**TOOL, "title": hostile, "kind": '"><script>'},
            {**PLAN, "entries": [{"content": hostile, "status": "<i>"}]},
            chunk(hostile, "m1"),
            chunk(" & more", "m1"),
            {"sessionUpdate": "error", "message": hostile},
            {"sessionUpdate": "session_renamed", "name": hostile},
        ],
    )
    resp = await export(client, sid, "html")
    assert resp.content_type == "text/html"
    disposition = resp.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="<b>bold<_b> & co.html"'
    page = await resp.text()
    assert page.startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")
    assert "<title>&lt;b&gt;bold&lt;/b&gt; &amp; co</title>" in page
    assert "default-src 'none'" in page
    # nothing from the log became markup: the only tags are our own
    assert "<script" not in page
    assert "<img" not in page
    assert "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tags = {m.split()[0].strip("</>") for m in re.findall(r"</?[a-z0-9]+[^>]*>", page)}
    assert tags <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h3", "p", "code",
        "main", "section", "div", "details", "summary", "strong", "span", "ul",
        "li", "ol", "pre",
    }  # fmt: skip
    assert '<div class="text">&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; more</div>" in page


async def test_filenames(client, pool, workspace_id) -> None:
    unnamed = await make_session(pool, workspace_id)
    resp = await export(client, unnamed, None)  # markdown when format is absent
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="{unnamed}.md"'
    )
    assert (await resp.text()).startswith(f"# {unnamed}\n")
    named = await make_session(pool, workspace_id, name='Ünïcode "q" a\\b/c\td ☃')
    resp = await export(client, named, "html")
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="_n_code _q_ a_b_c_d _.html"; '
        "filename*=UTF-8''%C3%9Cn%C3%AFcode%20_q_%20a_b_c_d%20%E2%98%83.html"
    )


def test_content_disposition_rules() -> None:
    cd = export_mod.content_disposition
    assert cd("plain name", "id", "md") == 'attachment; filename="plain name.md"'
    assert cd(None, "the-id", "jsonl") == 'attachment; filename="the-id.jsonl"'
    # C0, DEL and C1 controls too; all replaced, the name is plain ASCII again
    assert cd('a"b\\c/d\x7fe\x85f\ng', "id", "md") == (
        'attachment; filename="a_b_c_d_e_f_g.md"'
    )
    assert cd("日本", "id", "md") == (
        "attachment; filename=\"__.md\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.md"
    )


async def test_bad_format_and_unknown_session(client, pool, workspace_id) -> None:
    sid = await make_session(pool, workspace_id)
    for fmt in ("pdf", "MARKDOWN", "md"):
        resp = await client.get(f"/api/sessions/{sid}/export", params={"format": fmt})
        assert resp.status == 400
        assert (await resp.json())["error"].startswith(f"Invalid format: {fmt}")
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        # an unknown session is 404 whatever the format, as every session sub-route
        resp = await client.get(
            f"/api/sessions/{unknown}/export", params={"format": "pdf"}
        )
        assert resp.status == 404
        assert await resp.json() == {"error": "Session not found"}


async def test_events_stored_during_the_export_are_left_out(
    client, pool, workspace_id, monkeypatch
) -> None:
    """The export is the log as it was when asked for, even while a turn goes on."""
    monkeypatch.setattr(export_mod, "PAGE", 2)
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [user(f"p{i}") for i in range(5)])
    real_after = session_events.after

    async def after_then_append(conn, session_id, after_id, limit=None):
        page = await real_after(conn, session_id, after_id, limit)
        await add_events(pool, sid, [user("late")])
        return page

    monkeypatch.setattr(session_events, "after", after_then_append)
    body = await (await export(client, sid, "jsonl")).read()
    assert [line.count(b'"p') for line in body.splitlines()] == [1] * 5
    assert b"late" not in body


async def test_a_failure_mid_stream_cuts_the_connection(
    client, pool, workspace_id, monkeypatch
) -> None:
    """Headers are out, so no error body: the client must see a broken transfer, never
    a file that looks whole."""
    monkeypatch.setattr(export_mod, "PAGE", 2)
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [user(f"p{i}") for i in range(5)])
    real_after = session_events.after
    calls = 0

    async def failing_after(conn, session_id, after_id, limit=None):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("postgres went away")
        return await real_after(conn, session_id, after_id, limit)

    monkeypatch.setattr(session_events, "after", failing_after)
    resp = await client.get(f"/api/sessions/{sid}/export", params={"format": "html"})
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_scope_as_every_session_route(
    aiohttp_client, make_settings, pool, workspace_id
) -> None:
    token = "tok-a-" + uuid.uuid4().hex
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other_ws)
    client = await aiohttp_client(
        create_app(make_settings(auth_tokens=f"{token}={workspace_id}"))
    )
    mine = await make_session(pool, workspace_id)
    theirs = await make_session(pool, other_ws)
    headers = {"Authorization": f"Bearer {token}"}
    resp = await client.get(f"/api/sessions/{mine}/export")
    assert resp.status == 401
    resp = await client.get(f"/api/sessions/{theirs}/export", headers=headers)
    assert resp.status == 403
    resp = await client.get(
        f"/api/sessions/{theirs}/export", params={"format": "pdf"}, headers=headers
    )
    assert resp.status == 403  # nothing about another workspace's session, not even 400
    resp = await client.get(f"/api/sessions/{mine}/export", headers=headers)
    assert resp.status == 200


async def test_an_echo_session_exported_through_the_real_services(
    aiohttp_client, settings, cwd_root, workspace_id
) -> None:
    gateway = await aiohttp_client(create_gateway(settings))
    await wait_fanout_ready(gateway.app)
    query = await aiohttp_client(create_app(settings))
    created = await ok(gateway, "session/new", {"workspaceId": workspace_id})
    sid = created["sessionId"]
    for prompt in ("/think deep thoughts", "/tool", "/plan", "hello there"):
        await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": prompt})
    text = await (await export(query, sid, "markdown")).text()
    for part in (
        "### User\n\n/think deep thoughts\n\n",
        "<summary>Thinking</summary>\n\ndeep thoughts\n\n</details>",
        "### Agent\n\necho: deep thoughts\n\n",
        "**Tool call:**",
        "_completed_",
        "**Plan**\n\n- [ ] ",
        "**Plan**\n\n- [x] ",
        "### User\n\nhello there\n\n### Agent\n\necho: hello there\n\n",
        "_turn complete: end_turn_",
    ):
        assert part in text, (part, text)
    jsonl = await (await export(query, sid, "jsonl")).read()
    history = await (await query.get(f"/api/sessions/{sid}/history")).read()
    assert history == b'{"history":[' + b",".join(jsonl.splitlines()) + b"]}"
