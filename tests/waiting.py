"""The one way tests wait for something to happen: `await wait_until(...)`.

    await wait_until(lambda: node.queue_depth == 2, what="both requests queued")
    await wait_until(membership_changed_event, what="the view changed")
    await wait_until(proc.wait(), timeout=20, what="the node exited")

- When the code under test offers an event or an awaitable, pass it: nothing polls.
- Otherwise pass a predicate (plain or async). It is checked at once, then after 1 ms, doubling up to
  50 ms between checks: a condition that holds soon is seen soon, a long wait costs
  little CPU, and no test depends on how long one sleep takes.
- `timeout` is a generous upper bound in real seconds (CI runs on two loaded cores),
  never an expectation: a passing test does not wait it out. When it passes, the
  test fails with an AssertionError that names `what`.

Waiting for time itself to pass belongs to the clock: components take a
`swarm._clock.Clock`, and a test hands them a FakeClock and moves it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["wait_until"]

_FIRST_PAUSE = 0.001
_MAX_PAUSE = 0.05

Condition = Callable[[], object] | asyncio.Event | Awaitable[Any]


async def wait_until(condition: Condition, *, timeout: float = 10.0,
                     what: str | Callable[[], str] = "the condition") -> float:
    """Wait until `condition` holds (a predicate, plain or async, is truthy; an event is
    set; an awaitable is done); return the real seconds it took. AssertionError naming `what`
    after `timeout`; a callable `what` is called then, to describe the state it gave up in.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            if isinstance(condition, asyncio.Event):
                await condition.wait()
            elif inspect.isawaitable(condition):
                await condition
            else:
                pause = _FIRST_PAUSE
                while not await _check(condition):
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _MAX_PAUSE)
    except TimeoutError:
        if not deadline.expired():
            raise  # the awaitable's own error
        described = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout:g} s waiting for {described}") from None
    return loop.time() - started


async def _check(predicate: Callable[[], object]) -> bool:
    result = predicate()
    if inspect.isawaitable(result):  # an async predicate (one that asks a server, say)
        result = await result
    return bool(result)
