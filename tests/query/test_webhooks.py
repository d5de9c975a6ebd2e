"""Webhooks: CRUD and bad input, the outbox triggers, signed delivery to a real receiver,
retries with the same webhook-id, dead-lettering, the allow-list, and the retry plan.

Receivers are real aiohttp servers on 127.0.0.1 (allowed with WEBHOOK_ALLOW=127.0.0.1);
the query service's own delivery worker posts to them. Waits are hang guards only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook as StandardWebhook

from services.gateway.app import create_app as create_gateway
from services.query.app import create_app as create_query
from services.query.keys import TIMEOUT_KEY
from services.query.webhook_delivery import (
    FIRST_RETRY,
    GIVE_UP_AFTER,
    KEEP_FINISHED,
    MAX_GAP,
    DeliveryWorker,
    next_attempt,
    sign,
)
from services.query.webhook_targets import (
    AllowList,
    TargetRefused,
    check_target,
)
from shared.db import webhooks as webhooks_db
from shared.events import gateway_update, record
from tests.gateway.conftest import wait_fanout_ready
from tests.gateway.rpcutil import call, ok, wait_ready
from tests.security.conftest import bearer, insert_session

WAIT = 30.0  # hang guard only, never a timing assertion
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ALL_EVENTS = [
    "session_created",
    "session_deleted",
    "turn_complete",
    "permission_requested",
    "session_error",
]


# --- a real receiver -------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return orjson.loads(self.body)


class Receiver:
    """Records every request; answers each with the next planned action, then with
    `default` (which a test may change to make a failing receiver recover).

    An action is a status code, or "hang": answer nothing until the test ends.
    """

    def __init__(self, plan: Sequence[int | str] = (), default: int = 200) -> None:
        self.plan = list(plan)
        self.default = default
        self.requests: list[Received] = []
        self.arrived: asyncio.Queue[Received] = asyncio.Queue()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(request.path, dict(request.headers), await request.read())
        n = len(self.requests)
        self.requests.append(got)
        self.arrived.put_nowait(got)
        action = self.plan[n] if n < len(self.plan) else self.default
        if action == "hang":
            await self.release.wait()
            return web.Response(status=200)
        if action == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=int(action))

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.requests.append(
            Received(request.path, dict(request.headers), await request.read())
        )
        return web.Response(status=200)

    async def next(self) -> Received:
        async with asyncio.timeout(WAIT):
            return await self.arrived.get()

    async def until(self, types: set[str]) -> dict[str, Received]:
        """Requests until one of each type arrived (concurrent attempts may reorder)."""
        seen: dict[str, Received] = {}
        while not types <= seen.keys():
            got = await self.next()
            seen.setdefault(got.json["type"], got)
        return seen


@pytest.fixture
async def start_receiver(aiohttp_server):
    receivers: list[Receiver] = []

    async def _start(
        plan: Sequence[int | str] = (), default: int = 200
    ) -> tuple[Receiver, str]:
        receiver = Receiver(plan, default)
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        app.router.add_route("*", "/elsewhere", receiver.elsewhere)
        server = await aiohttp_server(app, host="127.0.0.1")
        receivers.append(receiver)
        return receiver, str(server.make_url("/hook"))

    yield _start
    for receiver in receivers:
        receiver.release.set()


@pytest.fixture(autouse=True)
async def _drop_webhooks(pool):
    """Deliveries left by one test must not keep a later test's workers busy."""
    yield
    await pool.execute("DELETE FROM webhooks")


@pytest.fixture
def make_query(make_settings, aiohttp_client):
    async def _make(timeout: float | None = None, **overrides: Any):
        values: dict[str, Any] = {
            "webhook_allow": "127.0.0.1",
            "webhook_poll_interval": 0.05,
        }
        values.update(overrides)
        app = create_query(make_settings(**values))
        if timeout is not None:
            app[TIMEOUT_KEY] = timeout
        return await aiohttp_client(app)

    return _make


@pytest.fixture
async def query(make_query):
    return await make_query()


async def add_webhook(client, workspace_id: str, url: str, events=None, **extra):
    resp = await client.post(
        f"/api/workspaces/{workspace_id}/webhooks",
        json={"url": url, "events": events or ALL_EVENTS, **extra},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def deliveries(client, workspace_id: str, webhook_id: str) -> list[dict]:
    resp = await client.get(
        f"/api/workspaces/{workspace_id}/webhooks/{webhook_id}/deliveries"
    )
    assert resp.status == 200, await resp.text()
    return (await resp.json())["deliveries"]


async def wait_deliveries(client, workspace_id, webhook_id, predicate) -> list[dict]:
    async with asyncio.timeout(WAIT):
        while True:
            found = await deliveries(client, workspace_id, webhook_id)
            if predicate(found):
                return found
            await asyncio.sleep(0.05)


def verify(secret: str, got: Received) -> dict[str, Any]:
    """The Standard Webhooks verifier, then the HMAC by hand as a second opinion."""
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    payload = StandardWebhook(key).verify(got.body, got.headers)
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode()
    mac = hmac.new(key, signed + got.body, hashlib.sha256).digest()
    assert got.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    return payload


async def error_of(resp) -> str:
    body = await resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --- the retry plan (pure) -------------------------------------------------------------

T0 = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)


def gap(attempts: int, rand: float, failed_after: float = 0.0) -> float | None:
    failed_at = T0 + timedelta(seconds=failed_after)
    at = next_attempt(attempts, T0, failed_at, lambda: rand)
    return None if at is None else (at - failed_at).total_seconds()


def test_retry_plan_starts_at_a_second_and_doubles() -> None:
    assert gap(1, 0.5) == pytest.approx(FIRST_RETRY)
    assert [gap(n, 0.5) for n in range(1, 6)] == pytest.approx([1, 2, 4, 8, 16])


def test_retry_plan_jitter_stays_within_twenty_percent() -> None:
    for attempts in (1, 4, 9):
        base = FIRST_RETRY * 2 ** (attempts - 1)
        low, high = gap(attempts, 0.0), gap(attempts, 0.999999)
        assert low == pytest.approx(base * 0.8)
        assert high == pytest.approx(base * 1.2, rel=1e-5)
        mid = [gap(attempts, r / 10) for r in range(10)]
        assert all(base * 0.8 <= g <= base * 1.2 for g in mid)
        assert len(set(mid)) == 10, "the random draw moves the gap"


def test_retry_plan_is_at_most_an_hour_apart() -> None:
    for attempts in (13, 20, 64, 10_000):
        for rand in (0.0, 0.5, 0.999999):
            g = gap(attempts, rand, failed_after=60.0)
            assert g is not None
            assert g <= MAX_GAP
            assert g >= MAX_GAP * 0.8


def test_retry_plan_gives_up_24_hours_after_the_first_attempt() -> None:
    day = GIVE_UP_AFTER.total_seconds()
    # close to the mark: the last retry lands exactly on it, not beyond
    failed_after = day - 100.0
    at = next_attempt(30, T0, T0 + timedelta(seconds=failed_after), lambda: 0.5)
    assert at == T0 + GIVE_UP_AFTER
    # a failure on or after the mark is final: dead
    assert next_attempt(31, T0, T0 + GIVE_UP_AFTER, lambda: 0.5) is None
    assert next_attempt(31, T0, T0 + timedelta(hours=30), lambda: 0.0) is None


def test_retry_plan_replayed_over_a_day_with_an_injected_clock() -> None:
    """Fail every attempt from T0 on (each failing the instant it starts)."""
    now, attempts, times = T0, 1, [T0]
    while True:
        at = next_attempt(attempts, T0, now, lambda: 0.5)
        if at is None:
            break
        assert at > now
        assert (at - now).total_seconds() <= MAX_GAP
        now, attempts = at, attempts + 1
        times.append(now)
    assert times[-1] == T0 + GIVE_UP_AFTER
    # 1+2+...+2048 s ≈ 68 min of doubling, then hourly until the mark
    assert 30 <= attempts <= 40


# --- signing (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "a plain secret of enough length",
        "whsec_" + base64.b64encode(b"k" * 24).decode(),
    ],
)
def test_signature_verifies_with_the_standard_webhooks_library(secret: str) -> None:
    body = '{"type":"turn_complete","data":{"text":"ünïcode"}}'
    ts = int(datetime.now(UTC).timestamp())
    got = Received(
        "/hook",
        {
            "webhook-id": "msg-1",
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, "msg-1", ts, body),
        },
        body.encode(),
    )
    assert verify(secret, got)["data"]["text"] == "ünïcode"
    # the plain secret is its UTF-8 bytes, not base64: a verifier treating it as
    # base64 must not agree
    if not secret.startswith("whsec_"):
        with pytest.raises(Exception, match=r"(?i)signature|padding|base64"):
            StandardWebhook(secret).verify(got.body, got.headers)


# --- the allow-list (pure, with an injected resolver) ----------------------------------


def resolver(table: dict[str, list[str]]):
    async def _resolve(host: str, port: int) -> list[str]:
        host = host.rstrip(".")  # a fully qualified name is the same host
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return _resolve


DNS = resolver(
    {
        "hooks.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.1.2.3"],
        "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
        "localhost": ["127.0.0.1", "::1"],
    }
)


async def refused(allow: AllowList, url: str) -> str:
    with pytest.raises(TargetRefused) as info:
        await check_target(allow, url, DNS)
    return str(info.value)


async def test_unset_allow_list_means_public_addresses_only() -> None:
    allow = AllowList.parse(None)
    await check_target(allow, "https://93.184.216.34/hook", DNS)
    await check_target(allow, "https://hooks.example.com/hook", DNS)
    for url in (
        "http://127.0.0.1/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://0.0.0.0/",
        "http://localhost/",
        "http://internal.example.com/",
        "http://mixed.example.com/",  # one bad address is enough
        "http://nowhere.invalid/",
    ):
        await refused(allow, url)


async def test_schemes_other_than_http_are_always_refused() -> None:
    allow = AllowList.parse("127.0.0.1,public")
    for url in (
        "file:///etc/passwd",
        "ftp://93.184.216.34/",
        "gopher://127.0.0.1/",
        "javascript:alert(1)",
        "//93.184.216.34/hook",
        "http:///no-host",
    ):
        await refused(allow, url)


async def test_allow_list_cidrs_names_and_public() -> None:
    allow = AllowList.parse("127.0.0.1, 10.1.0.0/16 ,hooks.example.com")
    await check_target(allow, "http://127.0.0.1:9/x", DNS)
    await check_target(allow, "http://10.1.200.7/x", DNS)
    await check_target(allow, "http://internal.example.com/x", DNS)  # 10.1.2.3
    await check_target(allow, "https://HOOKS.example.com./x", DNS)  # a listed name
    assert "10.2.0.1" in await refused(allow, "http://10.2.0.1/")
    await refused(allow, "http://127.0.0.2/")
    await refused(allow, "http://93.184.216.34/")  # public, but not listed
    await refused(allow, "http://localhost/")  # ::1 is not listed
    # `public` adds every public address back
    wide = AllowList.parse("public,10.1.0.0/16")
    await check_target(wide, "http://93.184.216.34/", DNS)
    await check_target(wide, "http://internal.example.com/", DNS)
    await refused(wide, "http://127.0.0.1/")


async def test_a_listed_name_may_not_lead_to_a_private_address() -> None:
    allow = AllowList.parse("internal.example.com")
    await refused(allow, "http://internal.example.com/")
    allow = AllowList.parse("internal.example.com,10.0.0.0/8")
    await check_target(allow, "http://internal.example.com/", DNS)


@pytest.mark.parametrize("spec", ["10.0.0.0/33", "*.example.com", "a b", "x/y"])
def test_bad_allow_list_entries_are_named(spec: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW"):
        AllowList.parse(spec)


def test_allow_list_parse_keeps_networks_by_version() -> None:
    allow = AllowList.parse("::1,fd00::/8")
    assert allow.networks == (
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert not allow.public


# --- routes ----------------------------------------------------------------------------


async def test_create_list_delete(query, workspace_id, start_receiver) -> None:
    _, url = await start_receiver()
    created = await add_webhook(query, workspace_id, url, ["turn_complete"])
    webhook, secret = created["webhook"], created["secret"]
    assert set(created) == {"webhook", "secret"}
    assert set(webhook) == {"id", "url", "events", "createdAt"}
    assert uuid.UUID(webhook["id"]).version == 4
    assert webhook["url"] == url
    assert webhook["events"] == ["turn_complete"]
    assert ISO.match(webhook["createdAt"])
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24

    given = "my own secret, long enough"
    second = await add_webhook(
        query,
        workspace_id,
        url,
        ["session_error", "turn_complete", "session_error"],
        secret=given,
    )
    assert second["secret"] == given
    assert second["webhook"]["events"] == ["session_error", "turn_complete"]

    resp = await query.get(f"/api/workspaces/{workspace_id}/webhooks")
    assert resp.status == 200
    listed = (await resp.json())["webhooks"]
    assert listed == [webhook, second["webhook"]]
    assert secret not in (await resp.text())
    assert given not in (await resp.text())

    assert await deliveries(query, workspace_id, webhook["id"]) == []
    resp = await query.delete(
        f"/api/workspaces/{workspace_id}/webhooks/{webhook['id']}"
    )
    assert resp.status == 200
    assert await resp.json() == {"deleted": True}
    resp = await query.delete(
        f"/api/workspaces/{workspace_id}/webhooks/{webhook['id']}"
    )
    assert resp.status == 404
    assert webhook["id"] in await error_of(resp)
    resp = await query.get(f"/api/workspaces/{workspace_id}/webhooks")
    assert (await resp.json())["webhooks"] == [second["webhook"]]


async def test_unknown_workspace_and_webhook_are_404(query, workspace_id, pool) -> None:
    ghost = "ws-nope-" + uuid.uuid4().hex[:8]
    base = f"/api/workspaces/{ghost}/webhooks"
    for method, path, body in (
        ("GET", base, None),
        ("POST", base, {"url": "http://127.0.0.1/", "events": ["turn_complete"]}),
        ("DELETE", f"{base}/{uuid.uuid4()}", None),
        ("GET", f"{base}/{uuid.uuid4()}/deliveries", None),
    ):
        resp = await query.request(method, path, json=body)
        assert resp.status == 404, (method, path)
        assert ghost in await error_of(resp)
    base = f"/api/workspaces/{workspace_id}/webhooks"
    for hook_id in (str(uuid.uuid4()), "not-a-uuid"):
        for method, path in (
            ("DELETE", f"{base}/{hook_id}"),
            ("GET", f"{base}/{hook_id}/deliveries"),
        ):
            resp = await query.request(method, path)
            assert resp.status == 404, (method, path)
            assert hook_id in await error_of(resp)


async def test_a_webhook_of_another_workspace_is_404(
    query, workspace_id, pool, start_receiver
) -> None:
    _, url = await start_receiver()
    other = f"ws-other-{uuid.uuid4().hex[:8]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other)
    hook = (await add_webhook(query, other, url))["webhook"]
    for method, path in (
        ("DELETE", f"/api/workspaces/{workspace_id}/webhooks/{hook['id']}"),
        ("GET", f"/api/workspaces/{workspace_id}/webhooks/{hook['id']}/deliveries"),
    ):
        resp = await query.request(method, path)
        assert resp.status == 404, (method, path)
    resp = await query.get(f"/api/workspaces/{workspace_id}/webhooks")
    assert (await resp.json())["webhooks"] == []
    resp = await query.get(f"/api/workspaces/{other}/webhooks")
    assert [h["id"] for h in (await resp.json())["webhooks"]] == [hook["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["turn_complete"]}, "url"),
        ({"url": "", "events": ["turn_complete"]}, "url"),
        ({"url": 5, "events": ["turn_complete"]}, "url"),
        ({"url": "http://127.0.0.1/"}, "events"),
        ({"url": "http://127.0.0.1/", "events": []}, "events"),
        ({"url": "http://127.0.0.1/", "events": "turn_complete"}, "events"),
        ({"url": "http://127.0.0.1/", "events": ["turn_completed"]}, "events"),
        ({"url": "http://127.0.0.1/", "events": ["turn_complete", 3]}, "events"),
        (
            {"url": "http://127.0.0.1/", "events": ["turn_complete"], "secret": 7},
            "secret",
        ),
        (
            {"url": "http://127.0.0.1/", "events": ["turn_complete"], "secret": ""},
            "secret",
        ),
        (
            {
                "url": "http://127.0.0.1/",
                "events": ["turn_complete"],
                "secret": "short",
            },
            "secret",
        ),
        (
            {
                "url": "http://127.0.0.1/",
                "events": ["turn_complete"],
                "secret": "whsec_!!",
            },
            "secret",
        ),
        (
            {
                "url": "http://127.0.0.1/",
                "events": ["turn_complete"],
                "secret": "whsec_YWJj",
            },
            "secret",
        ),
        ({"url": "file:///etc/passwd", "events": ["turn_complete"]}, "url"),
        ({"url": "http://127.0.0.2/", "events": ["turn_complete"]}, "url"),
        ({"url": "http://10.0.0.1/", "events": ["turn_complete"]}, "url"),
        ({"url": "not a url at all", "events": ["turn_complete"]}, "url"),
        ({"url": "http://x\u0000y/", "events": ["turn_complete"]}, "url"),
    ],
)
async def test_bad_input_is_400_naming_the_field(query, workspace_id, body, field):
    resp = await query.post(f"/api/workspaces/{workspace_id}/webhooks", json=body)
    assert resp.status == 400, await resp.text()
    assert field in await error_of(resp)
    listed = await query.get(f"/api/workspaces/{workspace_id}/webhooks")
    assert (await listed.json())["webhooks"] == []


async def test_body_and_limit_errors(query, workspace_id, start_receiver) -> None:
    base = f"/api/workspaces/{workspace_id}/webhooks"
    resp = await query.post(
        base, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    resp = await query.post(base, json=["url"])
    assert resp.status == 400
    _, url = await start_receiver()
    hook = (await add_webhook(query, workspace_id, url))["webhook"]
    for bad in ("0", "1001", "x", "-1"):
        resp = await query.get(f"{base}/{hook['id']}/deliveries?limit={bad}")
        assert resp.status == 400
        assert "limit" in await error_of(resp)


async def test_loopback_needs_the_allow_list(make_query, workspace_id) -> None:
    """Without WEBHOOK_ALLOW only public addresses are accepted."""
    strict = await make_query(webhook_allow=None)
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "file:///x"):
        resp = await strict.post(
            f"/api/workspaces/{workspace_id}/webhooks",
            json={"url": url, "events": ["turn_complete"]},
        )
        assert resp.status == 400, url
        assert "url" in await error_of(resp)
    cidr = await make_query(webhook_allow="127.0.0.0/8")
    resp = await cidr.post(
        f"/api/workspaces/{workspace_id}/webhooks",
        json={"url": "http://127.0.0.9:9/hook", "events": ["turn_complete"]},
    )
    assert resp.status == 201, await resp.text()


def test_a_bad_allow_list_stops_the_start(make_settings) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW"):
        create_query(make_settings(webhook_allow="10.0.0.0/99"))


async def test_scoped_tokens(make_query, pool, start_receiver) -> None:
    ws_a, ws_b = (f"ws-{n}-{uuid.uuid4().hex[:8]}" for n in "ab")
    for ws in (ws_a, ws_b):
        await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", ws)
    tok_a, tok_b = "tok-a-" + uuid.uuid4().hex, "tok-b-" + uuid.uuid4().hex
    client = await make_query(auth_tokens=f"{tok_a}={ws_a};{tok_b}={ws_b}")
    _, url = await start_receiver()
    body = {"url": url, "events": ["turn_complete"]}
    resp = await client.post(f"/api/workspaces/{ws_a}/webhooks", json=body)
    assert resp.status == 401
    resp = await client.post(
        f"/api/workspaces/{ws_a}/webhooks", json=body, headers=bearer(tok_a)
    )
    assert resp.status == 201
    hook_id = (await resp.json())["webhook"]["id"]
    for method, path in (
        ("GET", f"/api/workspaces/{ws_a}/webhooks"),
        ("POST", f"/api/workspaces/{ws_a}/webhooks"),
        ("GET", f"/api/workspaces/{ws_a}/webhooks/{hook_id}/deliveries"),
        ("DELETE", f"/api/workspaces/{ws_a}/webhooks/{hook_id}"),
    ):
        resp = await client.request(method, path, json=body, headers=bearer(tok_b))
        assert resp.status == 403, (method, path)
    resp = await client.get(f"/api/workspaces/{ws_a}/webhooks", headers=bearer(tok_a))
    assert [h["id"] for h in (await resp.json())["webhooks"]] == [hook_id]


# --- the outbox triggers ---------------------------------------------------------------


async def outbox(pool, webhook_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT event, body FROM webhook_deliveries WHERE webhook_id = $1"
        " ORDER BY created_at, id",
        uuid.UUID(webhook_id),
    )
    return [{"event": r["event"], **orjson.loads(r["body"])} for r in rows]


async def test_triggers_enqueue_the_subscribed_events_only(pool, workspace_id) -> None:
    """Written with no service running: the rows come from the database alone."""
    hook_all, hook_turns = uuid.uuid4(), uuid.uuid4()
    for hook, events in ((hook_all, ALL_EVENTS), (hook_turns, ["turn_complete"])):
        await pool.execute(
            "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
            " VALUES ($1, $2, 'http://127.0.0.1:9/', $3, 'x')",
            hook,
            workspace_id,
            events,
        )
    other_ws = f"ws-other-{uuid.uuid4().hex[:8]}"
    await pool.execute("INSERT INTO workspaces (id, title) VALUES ($1, $1)", other_ws)
    sid = await insert_session(pool, workspace_id)
    elsewhere = await insert_session(pool, other_ws)
    async with pool.acquire() as conn:
        for target in (sid, elsewhere):
            await record(
                conn,
                uuid.UUID(target),
                [
                    gateway_update("acp_status", status="ready"),
                    gateway_update(
                        "user_message", content={"type": "text", "text": "hi"}
                    ),
                    gateway_update("tool_call", toolCallId="t1", status="pending"),
                    gateway_update(
                        "tool_call",
                        toolCallId="t2",
                        title="Run?",
                        status="waiting",
                        options=[{"optionId": "allow_once"}],
                    ),
                    gateway_update(
                        "tool_call_update", toolCallId="t2", status="waiting"
                    ),
                    gateway_update("turn_complete", stopReason="end_turn", note=None),
                    gateway_update("error", message="boom"),
                    gateway_update("acp_status", status="error", error="crashed"),
                ],
            )
    await pool.execute("DELETE FROM sessions WHERE session_id = $1", uuid.UUID(sid))

    got = await outbox(pool, str(hook_all))
    assert [g["type"] for g in got] == [
        "session_created",
        "permission_requested",
        "turn_complete",
        "session_error",
        "session_error",
        "session_deleted",
    ]
    assert all(g["event"] == g["type"] for g in got)
    assert all(g["workspaceId"] == workspace_id and g["sessionId"] == sid for g in got)
    assert all(ISO.match(g["at"]) for g in got)
    created, permission, turn, error, status, deleted = got
    assert "eventId" not in created
    assert created["data"] == {"cwd": "/tmp", "provider": "echo", "role": "CRAFTER"}
    assert permission["eventId"] == "4"
    assert permission["data"]["toolCallId"] == "t2"
    assert permission["data"]["status"] == "waiting"
    assert turn["eventId"] == "6"
    # the update as stored, nulls and all
    assert turn["data"] == {
        "sessionUpdate": "turn_complete",
        "stopReason": "end_turn",
        "note": None,
    }
    assert error["data"]["message"] == "boom"
    assert status["data"]["error"] == "crashed"
    assert "eventId" not in deleted
    assert deleted["data"] == {}
    assert [g["type"] for g in await outbox(pool, str(hook_turns))] == ["turn_complete"]


async def test_deleting_a_workspace_takes_webhooks_and_sessions_along(
    query, pool, start_receiver
) -> None:
    ws = f"ws-del-{uuid.uuid4().hex[:8]}"
    resp = await query.post("/api/workspaces", json={"id": ws, "title": "t"})
    assert resp.status == 201
    _, url = await start_receiver()
    await add_webhook(query, ws, url)
    for _ in range(3):
        await insert_session(pool, ws)
    resp = await query.delete(f"/api/workspaces/{ws}")
    assert resp.status == 200, await resp.text()
    assert (
        await pool.fetchval("SELECT count(*) FROM webhooks WHERE workspace_id = $1", ws)
        == 0
    )


# --- delivery --------------------------------------------------------------------------


async def test_echo_turn_is_delivered_signed(
    settings, make_query, aiohttp_client, cwd_root, pool, workspace_id, start_receiver
) -> None:
    receiver, url = await start_receiver()
    query = await make_query()
    gateway = await aiohttp_client(create_gateway(settings))
    await wait_fanout_ready(gateway.app)
    created = await add_webhook(query, workspace_id, url)
    secret = created["secret"]

    sid = (await ok(gateway, "session/new", {"workspaceId": workspace_id}))["sessionId"]
    await wait_ready(pool, sid)
    reply = await ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "hello"})
    assert reply["stopReason"] == "end_turn"
    seen = await receiver.until({"session_created", "turn_complete"})

    for kind, got in seen.items():
        payload = verify(secret, got)
        assert payload["type"] == kind
        assert payload["workspaceId"] == workspace_id
        assert payload["sessionId"] == sid
        assert ISO.match(payload["at"])
        assert got.headers["Content-Type"] == "application/json"
        assert uuid.UUID(got.headers["webhook-id"])
    turn = seen["turn_complete"].json
    stored = await pool.fetchval(
        "SELECT max(event_id) FROM session_events WHERE session_id = $1"
        " AND kind = 'turn_complete'",
        uuid.UUID(sid),
    )
    assert turn["eventId"] == str(stored)
    assert turn["data"]["stopReason"] == "end_turn"
    assert seen["session_created"].json["data"]["provider"] == "echo"

    # a permission request reaches the receiver while the turn waits for a person
    task = asyncio.create_task(
        ok(gateway, "session/prompt", {"sessionId": sid, "prompt": "/permission"})
    )
    asked = (await receiver.until({"permission_requested"}))["permission_requested"]
    verify(secret, asked)
    tool_call = asked.json["data"]
    assert tool_call["status"] == "waiting"
    await ok(
        gateway,
        "session/respond_user_input",
        {
            "sessionId": sid,
            "toolCallId": tool_call["toolCallId"],
            "response": {"decision": "approve"},
        },
    )
    assert (await task)["stopReason"] == "end_turn"

    # a failing turn is a session_error; deleting the session is session_deleted
    failed = await call(
        gateway, "session/prompt", {"sessionId": sid, "prompt": "/fail"}
    )
    assert "error" in failed, failed
    resp = await query.delete(f"/api/sessions/{sid}")
    assert resp.status == 200
    seen = await receiver.until({"session_error", "session_deleted"})
    assert seen["session_deleted"].json["sessionId"] == sid
    verify(secret, seen["session_error"])

    hook_id = created["webhook"]["id"]
    listed = await wait_deliveries(
        query,
        workspace_id,
        hook_id,
        lambda ds: len(ds) >= 6 and all(d["status"] == "delivered" for d in ds),
    )
    for d in listed:
        assert d["attempts"] == 1
        assert d["lastStatusCode"] == 200
        assert "nextAttemptAt" not in d
        assert "lastError" not in d
        assert ISO.match(d["createdAt"])
    ids = {d["id"] for d in listed}
    assert {r.headers["webhook-id"] for r in receiver.requests} <= ids


async def test_a_failure_is_retried_with_the_same_webhook_id(
    query, pool, workspace_id, start_receiver
) -> None:
    receiver, url = await start_receiver([500, 200])
    created = await add_webhook(query, workspace_id, url, ["session_created"])
    hook_id = created["webhook"]["id"]
    await insert_session(pool, workspace_id)
    first, second = await receiver.next(), await receiver.next()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    verify(created["secret"], first)
    verify(created["secret"], second)
    (delivery,) = await wait_deliveries(
        query, workspace_id, hook_id, lambda ds: ds and ds[0]["status"] == "delivered"
    )
    assert delivery["id"] == first.headers["webhook-id"]
    assert delivery["attempts"] == 2
    assert delivery["lastStatusCode"] == 200
    assert delivery["event"] == "session_created"


async def test_failed_state_is_visible_between_attempts(
    query, pool, workspace_id, start_receiver
) -> None:
    receiver, url = await start_receiver(default=503)
    created = await add_webhook(query, workspace_id, url, ["session_created"])
    hook_id = created["webhook"]["id"]
    await insert_session(pool, workspace_id)
    (failed,) = await wait_deliveries(
        query,
        workspace_id,
        hook_id,
        # the second request has reached the receiver (and got its 503): `attempts` may
        # count an attempt still in flight, which must not meet the recovered receiver
        lambda ds: (
            ds
            and ds[0]["status"] == "failed"
            and ds[0]["attempts"] >= 2
            and len(receiver.requests) >= 2
        ),
    )
    assert failed["lastStatusCode"] == 503
    assert failed["lastError"] == "HTTP 503"
    assert ISO.match(failed["nextAttemptAt"])
    receiver.default = 200  # the receiver recovers
    (delivered,) = await wait_deliveries(
        query, workspace_id, hook_id, lambda ds: ds[0]["status"] == "delivered"
    )
    assert delivered["attempts"] == len(receiver.requests) >= 3
    assert delivered["lastStatusCode"] == 200
    assert "lastError" not in delivered
    assert "nextAttemptAt" not in delivered
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivered["id"]}


async def test_a_receiver_that_times_out_then_recovers(
    make_query, pool, workspace_id, start_receiver
) -> None:
    query = await make_query(timeout=1.0)
    receiver, url = await start_receiver(["hang", 200])
    created = await add_webhook(query, workspace_id, url, ["session_created"])
    await insert_session(pool, workspace_id)
    first, second = await receiver.next(), await receiver.next()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    (delivery,) = await wait_deliveries(
        query,
        workspace_id,
        created["webhook"]["id"],
        lambda ds: ds and ds[0]["status"] == "delivered",
    )
    assert delivery["attempts"] == 2


async def test_redirects_are_not_followed(
    query, pool, workspace_id, start_receiver
) -> None:
    receiver, url = await start_receiver(default=302)
    created = await add_webhook(query, workspace_id, url, ["session_created"])
    hook_id = created["webhook"]["id"]
    await insert_session(pool, workspace_id)
    (failed,) = await wait_deliveries(
        query,
        workspace_id,
        hook_id,
        lambda ds: ds and ds[0].get("lastStatusCode") == 302,
    )
    assert failed["status"] == "failed"
    receiver.default = 200
    await wait_deliveries(
        query, workspace_id, hook_id, lambda ds: ds[0]["status"] == "delivered"
    )
    assert {r.path for r in receiver.requests} == {"/hook"}, "never to /elsewhere"


async def test_dead_after_24_hours_of_failures(
    query, pool, workspace_id, start_receiver
) -> None:
    """The first attempt is moved a day into the past; the next failure is final."""
    receiver, url = await start_receiver([500] * 10)
    created = await add_webhook(query, workspace_id, url, ["session_created"])
    hook_id = created["webhook"]["id"]
    await pool.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event, body, status, attempts,"
        " first_attempt_at, next_attempt_at) VALUES ($1, 'session_created', '{}',"
        " 'failed', 30, now() - interval '24 hours 1 second', now())",
        uuid.UUID(hook_id),
    )
    await receiver.next()
    (dead,) = await wait_deliveries(
        query, workspace_id, hook_id, lambda ds: ds and ds[0]["status"] == "dead"
    )
    assert dead["attempts"] == 31
    assert dead["lastStatusCode"] == 500
    assert "nextAttemptAt" not in dead
    assert len(receiver.requests) == 1, "a dead delivery is not tried again"


async def test_deliveries_wait_for_a_worker(
    make_query, pool, workspace_id, start_receiver
) -> None:
    """Events of a time when no query service ran are delivered once one starts."""
    receiver, url = await start_receiver()
    hook = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
        " VALUES ($1, $2, $3, $4, 'a secret of sixteen+ bytes')",
        hook,
        workspace_id,
        url,
        ["session_created"],
    )
    sid = await insert_session(pool, workspace_id)
    assert receiver.requests == []
    await make_query()
    got = await receiver.next()
    assert got.json["sessionId"] == sid
    verify("a secret of sixteen+ bytes", got)


async def test_two_workers_deliver_each_attempt_once(
    make_query, pool, workspace_id, start_receiver
) -> None:
    receiver, url = await start_receiver()
    first = await make_query()
    await make_query()  # a second instance, its own worker, the same outbox
    created = await add_webhook(first, workspace_id, url, ["session_created"])
    sids = {await insert_session(pool, workspace_id) for _ in range(40)}
    got = [await receiver.next() for _ in range(40)]
    assert {r.json["sessionId"] for r in got} == sids
    ids = [r.headers["webhook-id"] for r in got]
    assert len(set(ids)) == 40
    listed = await wait_deliveries(
        first,
        workspace_id,
        created["webhook"]["id"],
        lambda ds: len(ds) == 40 and all(d["status"] == "delivered" for d in ds),
    )
    assert {d["attempts"] for d in listed} == {1}
    assert len(receiver.requests) == 40


async def test_the_address_is_checked_again_at_delivery(
    pool, workspace_id, start_receiver
) -> None:
    """A host name allowed when registered but leading elsewhere now is not posted to."""
    receiver, url = await start_receiver()
    by_name = url.replace("127.0.0.1", "localhost")
    hook = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
        " VALUES ($1, $2, $3, $4, 'a secret of sixteen+ bytes')",
        hook,
        workspace_id,
        by_name,
        ["session_created"],
    )
    await insert_session(pool, workspace_id)
    worker = DeliveryWorker(pool, AllowList.parse("10.0.0.0/8"), poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(WAIT):
            while True:
                row = await pool.fetchrow(
                    "SELECT status, last_error FROM webhook_deliveries"
                    " WHERE webhook_id = $1",
                    hook,
                )
                if row["status"] == "failed":
                    break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "not allowed" in row["last_error"]
    assert receiver.requests == []


async def test_shutdown_hands_back_an_attempt_in_flight(
    pool, workspace_id, start_receiver
) -> None:
    """A worker stopped mid-attempt leaves the delivery due at once, the attempt uncounted."""
    receiver, url = await start_receiver(["hang"])
    hook = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
        " VALUES ($1, $2, $3, $4, 'a secret of sixteen+ bytes')",
        hook,
        workspace_id,
        url,
        ["session_created"],
    )
    await insert_session(pool, workspace_id)
    worker = DeliveryWorker(pool, AllowList.parse("127.0.0.1"), poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    await receiver.next()
    claimed = await pool.fetchrow(
        "SELECT attempts, next_attempt_at > now() AS held FROM webhook_deliveries"
        " WHERE webhook_id = $1",
        hook,
    )
    assert (claimed["attempts"], claimed["held"]) == (1, True)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    row = await pool.fetchrow(
        "SELECT status, attempts, first_attempt_at, next_attempt_at <= now() AS due"
        " FROM webhook_deliveries WHERE webhook_id = $1",
        hook,
    )
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["first_attempt_at"] is None
    assert row["due"]


async def test_finished_deliveries_are_purged_after_a_week(pool, workspace_id) -> None:
    hook = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
        " VALUES ($1, $2, 'http://127.0.0.1:9/', '{}', 'x')",
        hook,
        workspace_id,
    )
    for status, age, finished in (
        ("delivered", timedelta(days=8), True),
        ("dead", timedelta(days=8), True),
        ("delivered", timedelta(days=6), True),
        ("failed", timedelta(days=8), False),
    ):
        await pool.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event, body, status,"
            " next_attempt_at, finished_at) VALUES ($1, 'turn_complete', '{}', $2,"
            " now() + interval '1 hour',"
            " CASE WHEN $3 THEN now() - $4::interval END)",
            hook,
            status,
            finished,
            age,
        )
    assert await webhooks_db.purge(pool, KEEP_FINISHED) == 2
    left = await pool.fetch(
        "SELECT status FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY status",
        hook,
    )
    assert [r["status"] for r in left] == ["delivered", "failed"]


async def test_triggers_read_json_written_with_spaces(pool, workspace_id) -> None:
    """The trigger's text pre-filter does not depend on one JSON writer's spacing."""
    hook = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (id, workspace_id, url, events, secret)"
        " VALUES ($1, $2, 'http://127.0.0.1:9/', $3, 'x')",
        hook,
        workspace_id,
        ["permission_requested", "session_error"],
    )
    sid = uuid.UUID(await insert_session(pool, workspace_id))
    for event_id, kind, update in (
        (1, "tool_call", {"sessionUpdate": "tool_call", "status": "waiting"}),
        (2, "acp_status", {"sessionUpdate": "acp_status", "status": "error"}),
        (3, "tool_call", {"sessionUpdate": "tool_call", "status": "pending"}),
    ):
        payload = orjson.dumps({"update": update}).decode().replace(":", " : ")
        await pool.execute(
            "INSERT INTO session_events (session_id, event_id, kind, payload)"
            " VALUES ($1, $2, $3, $4)",
            sid,
            event_id,
            kind,
            payload,
        )
    got = await outbox(pool, str(hook))
    assert [(g["type"], g["eventId"]) for g in got] == [
        ("permission_requested", "1"),
        ("session_error", "2"),
    ]
