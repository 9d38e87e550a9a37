"""The injected clocks (swarm._clock) and the tests' one waiting helper (tests.waiting)."""

from __future__ import annotations

import asyncio

import pytest

from swarm._clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock, wait_within
from tests.waiting import wait_until


def test_both_clocks_are_sleeping_clocks() -> None:
    clocks: list[Clock] = [SystemClock(), FakeClock(), SYSTEM_CLOCK]
    readers: list[Clock] = list(clocks)
    assert all(c.monotonic() > 0 and c.time() > 1.7e9 for c in readers)


async def test_a_fake_sleep_parks_until_the_clock_gets_there() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 10), ("early", 1))]
    await wait_until(lambda: clock.sleepers == 2, what="both sleeps parked")
    assert clock.next_deadline == 1_001.0
    clock.advance(0.5)
    await asyncio.sleep(0)  # a woken sleeper would run at this turn
    assert woke == []
    assert clock.jump() == 0.5  # to the earliest deadline
    await wait_until(lambda: woke == [("early", 1_001.0)], what="the early sleeper")
    clock.advance(100)
    await asyncio.gather(*tasks)
    assert woke == [("early", 1_001.0), ("late", 1_101.0)]
    assert clock.sleepers == 0
    assert clock.jump() == 0.0


async def test_a_cancelled_fake_sleep_is_forgotten() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await wait_until(lambda: clock.sleepers == 1, what="the sleep parked")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    assert clock.next_deadline is None
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="does not go back"):
        clock.set(0)


async def test_autojump_runs_hours_of_sleeps_without_waiting() -> None:
    clock = FakeClock(autojump=True)
    ticks: list[float] = []

    async def periodic() -> None:
        for _ in range(24):
            await clock.sleep(3600)
            ticks.append(clock.monotonic())

    async def once() -> float:
        await clock.sleep(5400)
        return clock.monotonic()

    loop = asyncio.get_running_loop()
    started = loop.time()
    _, at = await asyncio.gather(periodic(), once())
    assert loop.time() - started < 5  # no real waiting (bound generous for loaded CI)
    assert ticks == [1_000.0 + 3600 * i for i in range(1, 25)]
    assert at == 1_000.0 + 5400  # woken at its own deadline, between two ticks


async def test_wait_within_on_a_fake_clock() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_within(clock, event.wait(), 2.0))
    await wait_until(lambda: clock.sleepers == 1, what="the timeout parked")
    event.set()
    assert await waiting is True
    assert clock.sleepers == 0  # the timeout's sleep is gone

    event.clear()
    waiting = asyncio.create_task(wait_within(clock, event.wait(), 2.0))
    await wait_until(lambda: clock.sleepers == 1, what="the timeout parked")
    clock.advance(2.0)
    assert await waiting is False

    async def fails() -> None:
        raise KeyError("its own error")

    with pytest.raises(KeyError):
        await wait_within(clock, fails(), 2.0)
    assert await wait_within(clock, asyncio.sleep(0), None) is True


async def test_wait_within_on_the_system_clock() -> None:
    event = asyncio.Event()
    assert await wait_within(SYSTEM_CLOCK, event.wait(), 0.001) is False
    event.set()
    assert await wait_within(SYSTEM_CLOCK, event.wait(), 10) is True

    async def times_out_itself() -> None:
        raise TimeoutError("not the limit's")

    with pytest.raises(TimeoutError, match="not the limit's"):
        await wait_within(SYSTEM_CLOCK, times_out_itself(), 10)


async def test_wait_until_takes_a_predicate_an_event_or_an_awaitable() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    await wait_until(event, what="the event")
    flag: list[int] = []
    asyncio.get_running_loop().call_soon(flag.append, 1)
    assert await wait_until(lambda: flag, what="the flag") >= 0
    await wait_until(asyncio.sleep(0), what="a coroutine")
    with pytest.raises(AssertionError, match="waiting for the impossible"):
        await wait_until(lambda: False, timeout=0.05, what="the impossible")
    with pytest.raises(AssertionError, match="an event nobody sets"):
        await wait_until(asyncio.Event(), timeout=0.01, what="an event nobody sets")
