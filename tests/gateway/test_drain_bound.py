"""A drain that cannot finish still ends: SIGTERM must never hang a gateway.

Every step of a session's stop is bounded on its own; the drain as a whole is bounded too
(DRAIN_GRACE + DRAIN_MARGIN), so one stop stuck on something unforeseen leaves the rest to
cleanup instead of holding the process forever, and the log names what it waited on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.gateway import app as gateway_app
from services.gateway.keys import SESSION_MANAGER
from services.gateway.live import LiveSession
from tests.gateway.conftest import new_ready_session

pytestmark = pytest.mark.timeout(120)


async def test_a_stop_that_never_ends_does_not_hold_the_drain(
    new_gw, pool, workspace_id, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(gateway_app, "DRAIN_MARGIN", 0.5)
    gw = await new_gw("drain", drain_grace=0.0)
    sid = await new_ready_session(gw, pool, workspace_id)
    live = gw.app[SESSION_MANAGER].live[sid]
    stuck = asyncio.Event()  # never set

    async def never_stops(self: LiveSession, **_: Any) -> None:
        await stuck.wait()

    monkeypatch.setattr(LiveSession, "stop", never_stops)
    capsys.readouterr()
    await gateway_app.drain(gw.app)  # returns: without the bound it waits forever
    out = capsys.readouterr().out
    overran = [line for line in out.splitlines() if "drain overran" in line]
    assert overran, out
    assert "never_stops" in overran[0]  # the stuck stop's stack is named
    monkeypatch.undo()  # cleanup stops the session for real
    assert sid in gw.app[SESSION_MANAGER].live
    assert not live.closed.is_set()
