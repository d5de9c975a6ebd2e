"""Big numbers and long ids on the query service (issue 12, defect 8): a 400 naming the
field, never a 500 (a bigint out of range, Python's 4,300-digit int limit, a Postgres index
row too big). Blank note titles and empty query values keep their documented meaning.
"""

from __future__ import annotations

import secrets

import pytest

from shared.models.limits import MAX_ID_LENGTH
from tests.query.ntw_support import query_client
from tests.query.sessions_support import add_events, chunk, make_session

BEYOND_BIGINT = str(2**63)


def long_id() -> str:
    """Random characters (incompressible): 3,000+ of them overflowed a Postgres index row."""
    return secrets.token_urlsafe(3000)


@pytest.fixture
async def client(aiohttp_client, make_settings):
    return await query_client(aiohttp_client, make_settings)


async def error_of(resp) -> str:
    assert resp.status == 400, (resp.status, await resp.text())
    body = await resp.json()
    assert set(body) == {"error"}
    assert len(body["error"]) < 200, body  # a huge value is quoted cut short
    return str(body["error"])


# -- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("after", BEYOND_BIGINT, id="after-2^63"),
        pytest.param("after", "9" * 5000, id="after-5000-digits"),
        pytest.param("after", "0" * 5000 + "1", id="after-zero-padded"),
        pytest.param("limit", "1" * 5000, id="limit-5000-digits"),
        pytest.param("limit", "0" * 5000 + "5", id="limit-zero-padded"),
    ],
)
async def test_history_numbers_beyond_range_are_400_naming_them(
    client, pool, workspace_id, name, value
) -> None:
    sid = await make_session(pool, workspace_id)
    resp = await client.get(f"/api/sessions/{sid}/history", params={name: value})
    if value.lstrip("0") in ("1", "5"):
        assert resp.status == 200, await resp.text()  # leading zeros, small value
        return
    message = await error_of(resp)
    assert message.startswith(f"Invalid {name}: "), message


async def test_largest_bigint_after_is_an_empty_page(
    client, pool, workspace_id
) -> None:
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [chunk("a"), chunk("b")])
    resp = await client.get(
        f"/api/sessions/{sid}/history", params={"after": str(2**63 - 1)}
    )
    assert resp.status == 200
    assert (await resp.json()) == {"history": []}
    resp = await client.get(f"/api/sessions/{sid}/history", params={"after": "01"})
    assert [e["eventId"] for e in (await resp.json())["history"]] == ["2"]


async def test_session_list_limit_with_5000_digits_is_400(client) -> None:
    message = await error_of(await client.get("/api/sessions?limit=" + "1" * 5000))
    assert message.startswith("Invalid limit: "), message


async def test_empty_query_values_count_as_absent(client, pool, workspace_id) -> None:
    sid = await make_session(pool, workspace_id)
    await add_events(pool, sid, [chunk("a"), chunk("b")])
    resp = await client.get(f"/api/sessions/{sid}/history?after=&limit=")
    assert resp.status == 200
    assert len((await resp.json())["history"]) == 2
    resp = await client.get(f"/api/sessions?workspaceId={workspace_id}&limit=")
    assert resp.status == 200
    assert len((await resp.json())["sessions"]) == 1


# -- notes -------------------------------------------------------------------------------


async def test_long_note_ids_are_400_naming_them(client, workspace_id) -> None:
    for body, field in (
        ({"noteId": long_id()}, "noteId"),
        ({"sessionId": long_id()}, "sessionId"),
    ):
        resp = await client.post(
            "/api/notes", json={"workspaceId": workspace_id, "content": "x", **body}
        )
        message = await error_of(resp)
        assert message.startswith(f"Invalid {field}: "), message
        assert str(MAX_ID_LENGTH) in message
    for method in ("GET", "DELETE"):
        resp = await client.request(
            method,
            "/api/notes",
            params={"workspaceId": workspace_id, "noteId": long_id()},
        )
        assert (await error_of(resp)).startswith("Invalid noteId: ")


async def test_note_id_of_the_maximum_length_round_trips(client, workspace_id) -> None:
    note_id = "n" * MAX_ID_LENGTH
    resp = await client.post(
        "/api/notes", json={"workspaceId": workspace_id, "noteId": note_id}
    )
    assert resp.status == 201
    resp = await client.get(
        "/api/notes", params={"workspaceId": workspace_id, "noteId": note_id}
    )
    assert (await resp.json())["note"]["id"] == note_id


async def test_blank_note_title_is_untitled(client, workspace_id) -> None:
    resp = await client.post(
        "/api/notes", json={"workspaceId": workspace_id, "title": " \t\n "}
    )
    assert resp.status == 201
    assert (await resp.json())["note"]["title"] == "Untitled"


# -- tasks -------------------------------------------------------------------------------


async def test_long_task_ids_are_400_naming_them(client, workspace_id) -> None:
    base = {"workspaceId": workspace_id, "title": "t", "objective": "o"}
    for extra, field in (
        ({"id": long_id()}, "id"),
        ({"sessionId": long_id()}, "sessionId"),
    ):
        resp = await client.post("/api/tasks", json={**base, **extra})
        message = await error_of(resp)
        assert message.startswith(f"Invalid {field}: "), message
    resp = await client.post("/api/tasks", json=base)
    assert resp.status == 201
    task_id = (await resp.json())["task"]["id"]
    resp = await client.patch(f"/api/tasks/{task_id}", json={"sessionId": long_id()})
    assert (await error_of(resp)).startswith("Invalid sessionId: ")

    long = long_id()
    for method, path, body in (
        ("GET", f"/api/tasks/{long}", None),
        ("PATCH", f"/api/tasks/{long}", {"title": "x"}),
        ("DELETE", f"/api/tasks/{long}", None),
        ("POST", f"/api/tasks/{long}/status", {"status": "COMPLETED"}),
    ):
        resp = await client.request(method, path, json=body)
        assert (await error_of(resp)).startswith("Invalid id: "), (method, path)
    resp = await client.delete("/api/tasks", params={"taskId": long})
    assert (await error_of(resp)).startswith("Invalid taskId: ")


@pytest.mark.parametrize("position", [2**31, 2**40, -(2**31) - 1])
async def test_task_position_beyond_an_integer_is_400(
    client, workspace_id, position
) -> None:
    base = {"workspaceId": workspace_id, "title": "t", "objective": "o"}
    resp = await client.post("/api/tasks", json={**base, "position": position})
    assert (await error_of(resp)).startswith("Invalid position: ")
    resp = await client.post("/api/tasks", json={**base, "position": 2**31 - 1})
    assert resp.status == 201
    task_id = (await resp.json())["task"]["id"]
    resp = await client.patch(f"/api/tasks/{task_id}", json={"position": position})
    assert (await error_of(resp)).startswith("Invalid position: ")


# -- workspaces --------------------------------------------------------------------------


async def test_long_codebase_id_is_400_naming_it(client) -> None:
    resp = await client.post(
        "/api/workspaces",
        json={
            "title": "w",
            "codebases": [{"id": long_id(), "repoPath": "/tmp/repo"}],
        },
    )
    message = await error_of(resp)
    assert message.startswith("Invalid codebases[0].id: "), message
