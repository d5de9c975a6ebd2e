"""SingleFlight: concurrent calls for one key share one call and its answer or error."""

from __future__ import annotations

import asyncio

import pytest

from services.common.singleflight import SingleFlight


class Calls:
    """A call that waits until released, counting how often it started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def answer(self, value: str) -> str:
        self.started += 1
        await self.release.wait()
        return value

    async def fail(self) -> str:
        self.started += 1
        await self.release.wait()
        raise LookupError("no such thing")


def start(
    flights: SingleFlight[str, str], key: str, calls: Calls, value: str
) -> asyncio.Task[str]:
    """A caller of `key` whose call (if it makes one) answers `value`."""
    return asyncio.create_task(flights.run(key, lambda: calls.answer(value)))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_of_one_key_share_one_call() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls = Calls()
    waiters = [
        asyncio.create_task(flights.run("k", lambda: calls.answer("v")))
        for _ in range(50)
    ]
    await settle()
    assert calls.started == 1
    calls.release.set()
    assert await asyncio.gather(*waiters) == ["v"] * 50
    assert len(flights) == 0  # nothing kept once the call is over
    # a later caller makes a new call
    assert await flights.run("k", lambda: calls.answer("w")) == "w"
    assert calls.started == 2


async def test_different_keys_each_get_their_own_call() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls = Calls()
    a, b = start(flights, "a", calls, "A"), start(flights, "b", calls, "B")
    await settle()
    assert calls.started == 2
    calls.release.set()
    assert list(await asyncio.gather(a, b)) == ["A", "B"]


async def test_an_error_reaches_every_caller_and_is_not_kept() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls = Calls()
    waiters = [asyncio.create_task(flights.run("k", calls.fail)) for _ in range(3)]
    await settle()
    calls.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results), results
    assert calls.started == 1
    assert await flights.run("k", lambda: calls.answer("again")) == "again"


async def test_a_cancelled_caller_does_not_cancel_the_call_for_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    calls = Calls()
    first, second = start(flights, "k", calls, "v"), start(flights, "k", calls, "x")
    await settle()
    first.cancel()  # its client hung up
    with pytest.raises(asyncio.CancelledError):
        await first
    calls.release.set()
    assert await second == "v"
    assert calls.started == 1
