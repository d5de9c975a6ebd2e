"""Pure logic of the session routes: query parsing, names, consolidation, touched files."""

from __future__ import annotations

import pytest

from services.query.session_views import (
    clean_name,
    consolidate,
    fork_name,
    parse_history_query,
    parse_list_query,
    touched_files,
)
from shared.errors import BadRequest


def _chunk(event_id: int, text: str, message_id: str | None = None, **extra):
    update = {
        "sessionUpdate": "agent_message_chunk",
        "content": {"type": "text", "text": text},
    }
    if message_id is not None:
        update["messageId"] = message_id
    return {"sessionId": "s", "eventId": str(event_id), "update": update, **extra}


def test_list_query_normalises_spellings_to_one_cache_key():
    a = parse_list_query({"status": "IDLE", "workspaceId": "w", "foo": "1"})
    b = parse_list_query({"workspaceId": "w", "status": "idle"})
    assert a == b
    assert a.cache_key == b.cache_key
    assert parse_list_query({}).cache_key != parse_list_query({"limit": "5"}).cache_key
    assert parse_list_query({"workspaceId": ""}).workspace_id is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "done"}, "Invalid status: done"),
        ({"limit": "0"}, "Invalid limit: 0"),
        ({"limit": "+5"}, "Invalid limit: +5"),
        ({"limit": "1e3"}, "Invalid limit: 1e3"),
    ],
)
def test_list_query_errors_name_the_filter(query, message):
    with pytest.raises(BadRequest) as info:
        parse_list_query(query)
    assert info.value.message == message


def test_history_query_defaults_and_errors():
    q = parse_history_query({})
    assert (q.after, q.limit, q.consolidated) == (0, 1000, False)
    assert parse_history_query({"consolidated": "true"}).consolidated
    for query, message in [
        ({"after": " 1"}, "Invalid after:  1"),
        ({"after": "٣"}, "Invalid after: ٣"),  # a digit, but not an ASCII one
        ({"consolidated": "TRUE"}, "Invalid consolidated: TRUE"),
    ]:
        with pytest.raises(BadRequest) as info:
            parse_history_query(query)
        assert info.value.message == message


def test_names():
    assert clean_name("  a b  ") == "a b"
    assert clean_name("é" * 200) == "é" * 200
    for bad in ["", " \t\n", "x" * 201, None, 3, ["a"]]:
        with pytest.raises(BadRequest):
            clean_name(bad)
    assert fork_name("Spec", "id-1") == "Fork of Spec"
    assert fork_name(None, "id-1") == "Fork of id-1"
    assert len(fork_name("z" * 200, "id")) == 200


def test_consolidate_merges_runs_by_message_id():
    events = [
        _chunk(1, "a", "m"),
        _chunk(2, "b", "m"),
        _chunk(3, "c", "n"),
        {
            "sessionId": "s",
            "eventId": "4",
            "update": {"sessionUpdate": "plan", "entries": []},
        },
        _chunk(5, "d"),
        _chunk(6, "e"),
        _chunk(7, "f", "m"),
    ]
    out = consolidate(events)
    assert [
        (e["eventId"], e["update"].get("messageId"), e["update"].get("content"))
        for e in out
    ] == [
        ("2", "m", {"type": "text", "text": "ab"}),
        ("3", "n", {"type": "text", "text": "c"}),
        ("4", None, None),
        ("6", None, {"type": "text", "text": "de"}),
        ("7", "m", {"type": "text", "text": "f"}),
    ]
    assert all(
        e["update"]["sessionUpdate"] == "agent_message"
        for e in out
        if e["eventId"] != "4"
    )
    assert out[2] is events[3]


def test_consolidate_keeps_non_text_chunks_and_other_keys():
    image = {
        "sessionId": "s",
        "eventId": "2",
        "update": {
            "sessionUpdate": "agent_message_chunk",
            "content": {"type": "image", "data": "x"},
        },
    }
    out = consolidate([_chunk(1, "a", _meta={"k": 1}), image, _chunk(3, "b")])
    assert out[0]["_meta"] == {"k": 1}
    assert out[1] is image
    assert out[2]["update"]["content"]["text"] == "b"
    assert consolidate([]) == []


def test_touched_files_newest_first_unique():
    events: list[dict] = [
        {
            "update": {
                "sessionUpdate": "tool_call",
                "locations": [{"path": "/a"}, {"path": "/b"}],
            }
        },
        {
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "locations": [{"path": "/no"}],
            }
        },
        {
            "update": {
                "sessionUpdate": "tool_call_update",
                "rawInput": {"path": "/c"},
                "locations": None,
            }
        },
        {
            "update": {
                "sessionUpdate": "tool_call_update",
                "locations": [{"path": "/a"}, {"line": 1}],
            }
        },
        {"update": {"sessionUpdate": "tool_call", "rawInput": {"path": 7}}},
    ]
    assert touched_files(events) == ["/a", "/c", "/b"]
