"""GET /api/search: ranked full-text hits over prompts and agent messages, real Postgres.

Events are stored with the gateway's own writers (`append`, `append_batch`), so the index
under test is the one the trigger keeps on the real write path.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from typing import Any

import pytest

from services.gateway.app import create_app as create_gateway
from services.query import search as search_mod
from services.query.app import create_app
from shared.db import migrate as migrate_mod
from shared.db.connect import create_pool
from shared.db.migrate import migrate
from shared.events import record
from tests.gateway.conftest import wait_fanout_ready
from tests.gateway.rpcutil import ok
from tests.query.sessions_support import (
    ISO_MS,
    add_events,
    chunk,
    make_session,
    searchable_texts,
)

TAGS = re.compile(r"<[^>]*>")


def user(text: str) -> dict[str, Any]:
    return {"sessionUpdate": "user_message", "content": {"type": "text", "text": text}}


DONE = {"sessionUpdate": "turn_complete", "stopReason": "end_turn"}


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await aiohttp_client(create_app(make_settings()))


async def search(client, **params: str) -> dict[str, Any]:
    resp = await client.get("/api/search", params=params)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def error_of(client, status: int, **params: str) -> str:
    resp = await client.get("/api/search", params=params)
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    return body["error"]


async def test_hits_carry_session_event_kind_snippet_and_time(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id, name="Deploys")
    other = await make_session(pool, workspace_id)
    ids = await add_events(
        pool,
        sid,
        [
            user("please deploy the staging cluster"),
            chunk("The staging ", "m1"),
            chunk("clus", "m1"),  # a word split across chunks is one word
            chunk("ter is deployed.", "m1"),
            DONE,
        ],
    )
    await add_events(pool, other, [user("staging only, no c-word here"), DONE])

    body = await search(client, workspaceId=workspace_id, q="staging cluster")
    assert "next" not in body
    hits = body["results"]
    # plain words are ANDed: the other session mentions only one of them
    assert {(h["sessionId"], h["kind"], h["eventId"]) for h in hits} == {
        (sid, "user_message", str(ids[0])),
        (sid, "agent_message", str(ids[3])),  # the last chunk of the message
    }
    for hit in hits:
        assert hit["sessionName"] == "Deploys"
        assert ISO_MS.match(hit["at"])
        assert "<mark>staging</mark>" in hit["snippet"]
        assert "<mark>cluster</mark>" in hit["snippet"]
    agent = next(h for h in hits if h["kind"] == "agent_message")
    assert TAGS.sub("", agent["snippet"]) == "The staging cluster is deployed."

    # a session without a name has no sessionName key (absent, not null)
    body = await search(client, workspaceId=workspace_id, q="c-word")
    assert [h["sessionId"] for h in body["results"]] == [other]
    assert "sessionName" not in body["results"][0]


async def test_web_search_syntax_phrases_exclusions_or(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    ids = await add_events(
        pool,
        sid,
        [
            user("red apples and green pears"),
            user("green apples and red pears"),
            user("bananas"),
        ],
    )

    async def found(q: str) -> set[int]:
        body = await search(client, workspaceId=workspace_id, q=q)
        return {int(h["eventId"]) for h in body["results"]}

    assert await found('"red apples"') == {ids[0]}
    assert await found("apples -green") == set()
    assert await found("pears -bananas") == {ids[0], ids[1]}
    assert await found("bananas OR pears") == set(ids)
    assert await found("red apples") == {ids[0], ids[1]}
    assert await found("the") == set()  # only a stop word: nothing, not an error


async def test_best_match_first(client, pool, workspace_id) -> None:
    sid = await make_session(pool, workspace_id)
    ids = await add_events(
        pool,
        sid,
        [
            user("one mention of kubernetes among many other words"),
            user("kubernetes kubernetes kubernetes"),
        ],
    )
    body = await search(client, workspaceId=workspace_id, q="kubernetes")
    assert [int(h["eventId"]) for h in body["results"]] == [ids[1], ids[0]]


async def test_messages_merge_like_consolidated_history(
    client, pool, workspace_id
) -> None:
    """Runs of adjacent chunks with one messageId are one document, as /history merges
    them; another messageId, another kind between, or a non-text chunk starts a new one."""
    sid = await make_session(pool, workspace_id)
    tool = {"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "read"}
    image = {
        "sessionUpdate": "agent_message_chunk",
        "content": {"type": "image", "data": "", "mimeType": "image/png"},
    }
    async with pool.acquire() as conn:
        # the gateway's batched writer, as used on the live path
        await record(
            conn,
            uuid.UUID(sid),
            [
                {"update": u}
                for u in [
                    chunk("zebra one ", "a"),
                    chunk("zebra two ", "a"),
                    chunk("zebra three", "b"),
                    tool,
                    chunk("zebra four"),
                    image,
                    chunk("zebra five"),
                    DONE,
                ]
            ],
        )
    history = await client.get(
        f"/api/sessions/{sid}/history", params={"consolidated": "true"}
    )
    merged = [
        e
        for e in (await history.json())["history"]
        if e["update"]["sessionUpdate"] == "agent_message"
    ]
    body = await search(client, workspaceId=workspace_id, q="zebra")
    hits = {h["eventId"]: TAGS.sub("", h["snippet"]) for h in body["results"]}
    assert hits == {e["eventId"]: e["update"]["content"]["text"] for e in merged}
    assert len(hits) == 4


async def test_documents_do_not_depend_on_how_events_were_batched(
    pool, workspace_id
) -> None:
    """Index passes see one stored batch at a time: whatever the cuts, every session ends
    with the documents consolidation gives (messages continued across batches included)."""
    events = [
        user("first prompt"),
        chunk("a1 ", "a"),
        chunk("a2 ", "a"),
        chunk("a3", "a"),
        chunk("b1 ", "b"),
        chunk("b2", "b"),
        {
            "sessionUpdate": "agent_thought_chunk",
            "content": {"type": "text", "text": "t"},
        },
        chunk("c1 "),
        chunk("c2"),
        user("second prompt"),
        chunk("d1 ", "d"),
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "image"}},
        chunk("e1 ", "d"),
        chunk("e2", "d"),
        DONE,
    ]
    expected = searchable_texts(events)
    rng = random.Random(14)
    splits = [[], list(range(1, len(events)))]  # one batch; one event per batch
    splits += [sorted(rng.sample(range(1, len(events)), k)) for k in (2, 4, 7) * 3]
    for cuts in splits:
        sid = await make_session(pool, workspace_id)
        bounds = [0, *cuts, len(events)]
        async with pool.acquire() as conn:
            for lo, hi in itertools.pairwise(bounds):
                await record(
                    conn, uuid.UUID(sid), [{"update": u} for u in events[lo:hi]]
                )
        rows = await pool.fetch(
            "SELECT event_id, body FROM search_documents WHERE session_id = $1 "
            "ORDER BY event_id",
            uuid.UUID(sid),
        )
        assert [(r["event_id"], r["body"]) for r in rows] == expected, cuts


async def test_an_open_message_is_searchable_once_its_session_moves_on(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [chunk("quokka "), chunk("sighting")])
    body = await search(client, workspaceId=workspace_id, q="quokka sighting")
    assert body["results"] == []  # its text is built when the message ends
    await add_events(pool, sid, [DONE])
    body = await search(client, workspaceId=workspace_id, q="quokka sighting")
    assert [h["eventId"] for h in body["results"]] == ["2"]


async def test_snippets_escape_everything_but_their_marks(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    evil = (
        "a real needle: if a < b && c > d then say \"hi\" & 'bye' "
        "<img src=x onerror=alert(1)> <b>bold</b> fake \ue000mark\ue001 end"
    )
    await add_events(pool, sid, [chunk(evil), DONE, user("needle\x00 with a NUL")])
    body = await search(client, workspaceId=workspace_id, q="needle")
    assert len(body["results"]) == 2
    agent = next(h for h in body["results"] if h["kind"] == "agent_message")
    snippet = agent["snippet"]
    assert set(TAGS.findall(snippet)) == {"<mark>", "</mark>"}
    assert snippet.count("<mark>") == 1
    assert "<mark>needle</mark>" in snippet
    for escaped in ("&lt;", "&amp;&amp;", "&gt;", "&quot;hi&quot;", "&#x27;bye&#x27;"):
        assert escaped in snippet
    assert "\ue000" not in snippet
    assert "\ue001" not in snippet


async def test_pages_follow_the_cursor_without_gaps_or_repeats(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    # ranks differ (1-4 mentions) and tie (many documents per rank)
    ids = await add_events(
        pool,
        sid,
        [user(" ".join(["walrus"] * (1 + i % 4) + ["filler"] * 5)) for i in range(23)],
    )
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"workspaceId": workspace_id, "q": "walrus", "limit": "10"}
        if after:
            params["after"] = after
        body = await search(client, **params)
        pages += 1
        seen += [h["eventId"] for h in body["results"]]
        after = body.get("next")
        if after is None:
            break
    assert pages == 3
    assert sorted(seen, key=int) == [str(i) for i in ids]
    full = await search(client, workspaceId=workspace_id, q="walrus", limit="100")
    assert [h["eventId"] for h in full["results"]] == seen  # the same order
    assert "next" not in full
    default = await search(client, workspaceId=workspace_id, q="walrus")
    assert len(default["results"]) == 20
    assert "next" in default


async def test_deleted_session_vanishes_at_once(client, pool, workspace_id) -> None:
    keep = await make_session(pool, workspace_id)
    gone = await make_session(pool, workspace_id)
    await add_events(pool, keep, [user("ocelot")])
    await add_events(pool, gone, [user("ocelot")])
    body = await search(client, workspaceId=workspace_id, q="ocelot")
    assert {h["sessionId"] for h in body["results"]} == {keep, gone}
    resp = await client.delete(f"/api/sessions/{gone}")
    assert resp.status == 200
    body = await search(client, workspaceId=workspace_id, q="ocelot")
    assert [h["sessionId"] for h in body["results"]] == [keep]
    left = await pool.fetchval(
        "SELECT count(*) FROM search_documents WHERE session_id = $1", uuid.UUID(gone)
    )
    assert left == 0


async def test_other_workspaces_are_never_searched(client, pool, workspace_id) -> None:
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other_ws)
    mine = await make_session(pool, workspace_id)
    theirs = await make_session(pool, other_ws)
    await add_events(pool, mine, [user("platypus")])
    await add_events(pool, theirs, [user("platypus")])
    body = await search(client, workspaceId=workspace_id, q="platypus")
    assert [h["sessionId"] for h in body["results"]] == [mine]


async def test_bad_input_names_the_field(client, pool, workspace_id) -> None:
    ws = workspace_id
    assert await error_of(client, 400, q="x") == "workspaceId is required"
    assert await error_of(client, 400, workspaceId="", q="x") == (
        "workspaceId is required"
    )
    for q in (None, "", "   "):
        params = {"workspaceId": ws} if q is None else {"workspaceId": ws, "q": q}
        assert await error_of(client, 400, **params) == "q is required"
    assert "q" in await error_of(client, 400, workspaceId=ws, q="x" * 501)
    assert "q" in await error_of(client, 400, workspaceId=ws, q="a\x00b")
    # 500 code points is allowed, whatever their UTF-8 size
    await search(client, workspaceId=ws, q="é" * 500)
    for limit in ("0", "101", "abc", "-1", "1.5"):
        assert await error_of(client, 400, workspaceId=ws, q="x", limit=limit) == (
            f"Invalid limit: {limit}"
        )
    assert await error_of(client, 404, workspaceId="no-such-ws", q="x") == (
        "Unknown workspace: no-such-ws"
    )


async def test_only_cursors_issued_for_this_search_are_taken(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [user("narwhal tusk") for _ in range(3)])
    first = await search(client, workspaceId=workspace_id, q="narwhal", limit="1")
    cursor = first["next"]
    second = await search(
        client, workspaceId=workspace_id, q="narwhal", limit="1", after=cursor
    )
    assert second["results"][0]["eventId"] != first["results"][0]["eventId"]

    payload, _, signature = cursor.partition(".")
    # the last character: its low bits are unused, so this is the same signature misspelt
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    first_flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    forged = [
        "garbage",
        "a.b",
        cursor + "x",
        f"{payload}.{flipped}",
        f"{payload}.{first_flipped}",
        f"{payload[::-1]}.{signature}",
        "€.€",
    ]
    for bad in forged:
        message = await error_of(
            client, 400, workspaceId=workspace_id, q="narwhal", after=bad
        )
        assert message.startswith("Invalid after"), message
    # a real cursor of another search is not one of this search
    for other in ({"q": "tusk"}, {"q": "narwhal "}):
        message = await error_of(
            client, 400, workspaceId=workspace_id, after=cursor, **other
        )
        assert message.startswith("Invalid after"), message
    # an empty after is no after
    again = await search(
        client, workspaceId=workspace_id, q="narwhal", limit="1", after=""
    )
    assert again["results"] == first["results"]


async def test_a_cursor_from_one_instance_works_on_another(
    aiohttp_client, make_settings, pool, workspace_id
) -> None:
    one = await aiohttp_client(create_app(make_settings()))
    two = await aiohttp_client(create_app(make_settings()))
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [user("axolotl"), user("axolotl")])
    first = await search(one, workspaceId=workspace_id, q="axolotl", limit="1")
    second = await search(
        two, workspaceId=workspace_id, q="axolotl", limit="1", after=first["next"]
    )
    pair = {first["results"][0]["eventId"], second["results"][0]["eventId"]}
    assert pair == {"1", "2"}
    assert "next" not in second


async def test_scope_as_every_other_route(
    aiohttp_client, make_settings, pool, workspace_id
) -> None:
    token_a, token_b = "tok-a-" + uuid.uuid4().hex, "tok-b-" + uuid.uuid4().hex
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other_ws)
    client = await aiohttp_client(
        create_app(make_settings(auth_tokens=f"{token_a}={workspace_id};{token_b}=*"))
    )
    params = {"workspaceId": other_ws, "q": "x"}
    resp = await client.get("/api/search", params=params)
    assert resp.status == 401
    resp = await client.get(
        "/api/search", params=params, headers={"Authorization": f"Bearer {token_a}"}
    )
    assert resp.status == 403
    # an unknown workspace outside the scope reveals nothing either: 403, not 404
    resp = await client.get(
        "/api/search",
        params={"workspaceId": "no-such-ws", "q": "x"},
        headers={"Authorization": f"Bearer {token_a}"},
    )
    assert resp.status == 403
    for token, ws in ((token_a, workspace_id), (token_b, other_ws)):
        resp = await client.get(
            "/api/search",
            params={"workspaceId": ws, "q": "x"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 200, await resp.text()


async def test_an_echo_turn_through_the_gateway_is_found(
    aiohttp_client, settings, cwd_root, workspace_id
) -> None:
    gateway = await aiohttp_client(create_gateway(settings))
    await wait_fanout_ready(gateway.app)
    query = await aiohttp_client(create_app(settings))
    created = await ok(
        gateway, "session/new", {"workspaceId": workspace_id, "name": "Echo"}
    )
    sid = created["sessionId"]
    await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "hello capybara"})
    body = await search(query, workspaceId=workspace_id, q="capybara")
    hits = {h["kind"]: h for h in body["results"]}
    assert set(hits) == {"user_message", "agent_message"}
    assert TAGS.sub("", hits["agent_message"]["snippet"]) == "echo: hello capybara"
    history = await query.get(
        f"/api/sessions/{sid}/history", params={"consolidated": "true"}
    )
    merged = [
        e
        for e in (await history.json())["history"]
        if e["update"]["sessionUpdate"] == "agent_message"
    ]
    assert hits["agent_message"]["eventId"] == merged[0]["eventId"]
    assert hits["agent_message"]["sessionName"] == "Echo"


async def test_the_migration_indexes_events_stored_before_it(
    fresh_db, monkeypatch
) -> None:
    """Events of a database older than the search migration are found like new ones."""
    everything = migrate_mod.load_migrations()
    before = [m for m in everything if m.version < "0007"]
    assert before[-1].version.startswith("0006")
    monkeypatch.setattr(migrate_mod, "load_migrations", lambda: before)
    await migrate(fresh_db)
    updates = [
        user("old prompt"),
        chunk("old ", "m"),
        chunk("answer", "m"),
        chunk("second", "n"),
        {"sessionUpdate": "plan", "entries": []},
        chunk("third\x00"),
        DONE,
    ]
    pool = await create_pool(fresh_db, min_size=1, max_size=2)
    try:
        old = await make_session(pool, "default")
        await add_events(pool, old, updates)
        monkeypatch.setattr(migrate_mod, "load_migrations", lambda: everything)
        await migrate(fresh_db)
        new = await make_session(pool, "default")
        await add_events(pool, new, updates)
        query = """SELECT first_event_id, event_id, workspace_id, kind, message_id, body
                   FROM search_documents WHERE session_id = $1 ORDER BY first_event_id"""
        indexed_old = [dict(r) for r in await pool.fetch(query, uuid.UUID(old))]
        indexed_new = [dict(r) for r in await pool.fetch(query, uuid.UUID(new))]
    finally:
        await pool.close()
    assert indexed_old == indexed_new
    assert [d["body"] for d in indexed_new] == [
        "old prompt",
        "old answer",
        "second",
        "third\ufffd",
    ]


def test_cursor_round_trip_and_tamper() -> None:
    from datetime import UTC, datetime

    from shared.db.search import Position

    query = search_mod.SearchQuery("ws", "q", 20, None)
    position = Position(0.1 + 0.2, datetime.now(UTC), uuid.uuid4(), 7)
    cursor = search_mod.encode_cursor(b"k" * 32, query, position)
    assert search_mod.decode_cursor(b"k" * 32, query, cursor) == position
    with pytest.raises(Exception, match="Invalid after"):
        search_mod.decode_cursor(b"j" * 32, query, cursor)
