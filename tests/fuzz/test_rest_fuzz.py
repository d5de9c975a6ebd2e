"""REST fuzzing (issue 7 item 4): schemathesis over /api/openapi.json against the real query
service, plus hypothesis round trips of hostile strings through notes, tasks, workspaces
and session names.

Zero 5xx (nothing is down here), zero tracebacks, every error a JSON {"error"}; Unicode,
very long, SQL- and path-looking strings come back verbatim (after the documented trim) or
are refused with a clear 400. The server runs on its own loop in a thread because
schemathesis calls it synchronously. REST_FUZZ_EXAMPLES sets the cases per operation
(default 20).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from services.query.app import create_app
from shared.db.connect import create_pool
from tests.fuzz.test_jsonrpc_fuzz import NASTY

EXAMPLES = int(os.environ.get("REST_FUZZ_EXAMPLES", "20"))
ROUND_TRIPS = int(os.environ.get("REST_FUZZ_ROUND_TRIPS", "60"))


class ThreadServer:
    """An aiohttp app served from its own event loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self) -> str:
        self._thread.start()
        self.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.run(site.start())
        self.port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def query_server(make_settings, database_url) -> Iterator[dict[str, Any]]:
    server = ThreadServer(create_app(make_settings()))
    base = server.start()
    ws = f"rest-fuzz-{uuid.uuid4().hex[:8]}"

    async def _seed() -> str:
        pool = await create_pool(database_url, min_size=1, max_size=1)
        try:
            await pool.execute(
                "INSERT INTO workspaces (id, title) VALUES ($1, 'fuzz')", ws
            )
            sid = uuid.uuid4()
            await pool.execute(
                "INSERT INTO sessions (session_id, workspace_id, cwd, provider)"
                " VALUES ($1, $2, '/tmp', 'echo')",
                sid,
                ws,
            )
            return str(sid)
        finally:
            await pool.close()

    sid = server.run(_seed())
    yield {"base": base, "ws": ws, "sid": sid}
    server.stop()


def _check(resp: Any, tally: collections.Counter[str], what: str) -> None:
    tally[str(resp.status_code)] += 1
    text = resp.text
    assert "Traceback" not in text, (what, text[:500])
    assert resp.status_code < 500, (what, resp.status_code, text[:500])
    if resp.status_code >= 400:
        ctype = resp.headers.get("content-type") or resp.headers.get("Content-Type")
        if isinstance(ctype, list):  # schemathesis' Response keeps header lists
            ctype = ctype[0]
        assert (ctype or "").startswith("application/json"), (what, resp.headers)
        body = resp.json()
        assert set(body) == {"error"}, (what, body)
        assert isinstance(body["error"], str)
        assert body["error"], what


def test_schemathesis_over_openapi(query_server):
    base = query_server["base"]
    schema = schemathesis.openapi.from_url(f"{base}/api/openapi.json")
    tally: collections.Counter[str] = collections.Counter()
    http = requests.Session()
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.endswith("/events"):
            continue  # SSE streams never end; they have their own tests
        operations += 1
        strategy = st.one_of(
            op.as_strategy(generation_mode=GenerationMode.POSITIVE),
            op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            resp = case.call(base_url=base, session=http, timeout=30)
            label = f"{case.method} {case.path} {case.path_parameters} {case.query}"
            _check(resp, tally, label)

        run()
    print(f"schemathesis: {operations} operations, statuses {dict(tally)}")  # noqa: T201
    assert operations >= 10
    assert sum(tally.values()) >= operations * min(EXAMPLES, 5)


hostile = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=400))


def test_hostile_strings_round_trip_or_400(query_server):
    base, ws, sid = query_server["base"], query_server["ws"], query_server["sid"]
    http = requests.Session()
    tally: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=ROUND_TRIPS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(title=hostile, content=hostile, name=hostile, label=hostile)
    # issue 12 defect 8: numbers past a bigint and int()'s 4,300 digits, a long random id
    @example(title=" ", content="x", name="n", label="9223372036854775808")
    @example(title="t", content="x", name="n", label="9" * 5000)
    @example(title="t", content="x", name="n", label=NASTY[-1])
    def run(title: str, content: str, name: str, label: str) -> None:
        # a note: title trimmed (or "Untitled"), content verbatim
        resp = http.post(
            f"{base}/api/notes",
            json={"workspaceId": ws, "title": title, "content": content},
            timeout=30,
        )
        _check(resp, tally, "POST /api/notes")
        if resp.status_code == 201:
            note = resp.json()["note"]
            assert note["content"] == content
            assert note["title"] == (title.strip() or "Untitled")
            got = http.get(
                f"{base}/api/notes",
                params={"workspaceId": ws, "noteId": note["id"]},
                timeout=30,
            )
            _check(got, tally, "GET /api/notes?noteId")
            assert got.json()["note"]["content"] == content
        else:
            assert resp.status_code == 400, resp.text
            tally["note refused"] += 1

        # a task: title required and trimmed, labels verbatim
        resp = http.post(
            f"{base}/api/tasks",
            json={
                "workspaceId": ws,
                "title": title,
                "objective": content,
                "labels": [label],
            },
            timeout=30,
        )
        _check(resp, tally, "POST /api/tasks")
        if resp.status_code == 201:
            task = resp.json()["task"]
            got = http.get(f"{base}/api/tasks/{task['id']}", timeout=30)
            _check(got, tally, "GET /api/tasks/{id}")
            task = got.json()["task"]
            assert task["title"] == title.strip()
            assert task["objective"] == content
            assert task["labels"] == [label]
        else:
            assert resp.status_code == 400, resp.text
            assert (
                not title.strip()
                or len(title.strip()) > 200
                or not content.strip()
                or "\x00" in title + content + label
            ), resp.text

        # a session name: 1-200 code points after trimming, else 400 Invalid name
        resp = http.patch(f"{base}/api/sessions/{sid}", json={"name": name}, timeout=30)
        _check(resp, tally, "PATCH /api/sessions/{id}")
        trimmed = name.strip()
        if resp.status_code == 200:
            got = http.get(f"{base}/api/sessions/{sid}", timeout=30).json()
            assert got["session"]["name"] == trimmed
        else:
            assert resp.status_code == 400, resp.text
            assert not 1 <= len(trimmed) <= 200 or "\x00" in trimmed, resp.text

        # ids and filters that look like paths or SQL: 404 / empty, never 5xx
        # (a request line over 8 KiB is refused by aiohttp's parser before our code runs)
        if len(quote(label).encode()) > 7000:
            return
        for params in (
            {"after": label},
            {"limit": label},
            {"after": label, "consolidated": "true"},
        ):
            _check(
                http.get(
                    f"{base}/api/sessions/{sid}/history", params=params, timeout=30
                ),
                tally,
                f"GET history {list(params)}",
            )
        _check(
            http.get(f"{base}/api/sessions", params={"limit": label}, timeout=30),
            tally,
            "GET /api/sessions?limit",
        )
        for method in ("GET", "DELETE"):
            _check(
                http.request(
                    method,
                    f"{base}/api/notes",
                    params={"workspaceId": ws, "noteId": label},
                    timeout=30,
                ),
                tally,
                f"{method} /api/notes?noteId",
            )
        for body in ({"noteId": label}, {"sessionId": label}):
            _check(
                http.post(
                    f"{base}/api/notes",
                    json={"workspaceId": ws, "content": "c", **body},
                    timeout=30,
                ),
                tally,
                f"POST /api/notes {list(body)}",
            )
        _check(
            http.post(
                f"{base}/api/tasks",
                json={"workspaceId": ws, "title": "t", "objective": "o", "id": label},
                timeout=30,
            ),
            tally,
            "POST /api/tasks id",
        )
        if len(quote(label).encode()) > 4000:
            return
        for path in (
            f"/api/sessions/{label}",
            f"/api/tasks/{label}",
            f"/api/workspaces/{label}",
        ):
            _check(http.get(base + path, timeout=30), tally, f"GET {path}")
        _check(
            http.get(
                f"{base}/api/notes",
                params={"workspaceId": ws, "sessionId": label},
                timeout=30,
            ),
            tally,
            "GET /api/notes?sessionId",
        )

    run()
    print(f"round trips: {ROUND_TRIPS} inputs, statuses {dict(tally)}")  # noqa: T201
    assert tally["201"] > 0
