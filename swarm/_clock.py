"""Injected clocks. Components take a clock instead of calling time.* or asyncio.sleep.

- `Clock` is what a component that reads or waits on time takes: `monotonic()` for
  durations, deadlines and expiry, `time()` for unix timestamps that cross the
  network, `await sleep(s)` to wait; `wait_within(clock, awaitable, s)` for "until
  this is done, or at most s".

Implementations:

- `SystemClock` (`SYSTEM_CLOCK` is the default instance): the machine's clocks,
  and the event loop's timers for waiting.
- `FakeClock`: time moves only when told to. A sleep parks until the clock reaches
  its deadline; `advance(s)`, `set(t)` and `jump()` move the clock and wake every
  sleeper that is due, in deadline order. With `autojump=True` nobody has to move
  it: one loop turn after a sleep parks, the clock jumps to the earliest deadline
  (like trio's MockClock autojump; see FakeClock). Tests drive loops that sleep for
  seconds or hours this way without waiting for real.
- swarm.simnet's VirtualClock reads a virtual-time event loop, whose timers (and so
  its sleeps) are virtual too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "wait_within"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines, expiry)."""
        ...

    def time(self) -> float:
        """Unix time in seconds (timestamps that cross the network)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock (<= 0: just yield to the loop)."""
        ...


class SystemClock:
    """The machine's clocks; sleeps are the event loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock that moves only when told to; sleeps on it park until it gets there.

    - `advance(s)` / `set(t)` move the clock (never back) and wake every sleeper whose
      deadline has come, earliest first; they resume at the event loop's next turn and
      all read the clock's new time. Call them from the loop's thread.
    - `jump()` moves the clock to the earliest parked deadline (one step of a
      discrete-event run); `sleepers` and `next_deadline` tell a test what is parked,
      so it can wait until a component sleeps before moving time.
    - `autojump=True`: whenever a sleeper is parked, the clock jumps to the earliest
      deadline one loop turn later, and again after that while sleepers remain. Tasks
      that can run at that turn run first, but asyncio cannot tell a task waiting for a
      thread or a socket from one that is idle, so time also jumps while those wait
      (trio's autojump does the same): a timeout raced against work in a thread (a
      drain, say) expires at once. Move such a clock by hand. A loop that does nothing
      but sleep runs back to back under autojump; give it a condition to stop on.

    A sleep cancelled while parked is forgotten.
    """

    def __init__(self, start: float = 1_000.0, wall_offset: float = 1_795_000_000.0, *,
                 autojump: bool = False) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self.autojump = autojump
        # (deadline, arrival order, future) of parked sleeps; a done future is stale.
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._jump: asyncio.Handle | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        if self.autojump:
            self._schedule_jump(loop)
        try:
            await wake
        finally:
            wake.cancel()  # no-op once woken; a cancelled sleep is skipped from now on

    @property
    def sleepers(self) -> int:
        """How many sleeps are parked on this clock."""
        return sum(not wake.done() for _, _, wake in self._sleepers)

    @property
    def next_deadline(self) -> float | None:
        """The earliest parked deadline (monotonic seconds), or None."""
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += seconds
        self._wake_due()

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("time does not go back")
        self._now = now
        self._wake_due()

    def jump(self) -> float:
        """Move to the earliest parked deadline and wake what is due; the seconds moved."""
        deadline = self.next_deadline
        if deadline is None or deadline <= self._now:
            self._wake_due()
            return 0.0
        moved = deadline - self._now
        self.set(deadline)
        return moved

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            wake = heapq.heappop(self._sleepers)[2]
            if not wake.done():
                wake.set_result(None)

    def _schedule_jump(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._jump is None:
            self._jump = loop.call_soon(self._autojump, loop)

    def _autojump(self, loop: asyncio.AbstractEventLoop) -> None:
        self._jump = None
        if not self.autojump:
            return
        self.jump()
        if self.sleepers:
            self._schedule_jump(loop)


async def wait_within(clock: Clock, awaitable: Awaitable[object],
                      timeout: float | None) -> bool:
    """Await `awaitable` for at most `timeout` seconds on `clock` (None: no limit).

    True once it is done (its errors propagate); False when the time ran out first,
    and then it is cancelled. On the system clock this is one loop timer
    (asyncio.timeout); on another clock it races the awaitable against a sleep.
    """
    if timeout is None:
        await awaitable
        return True
    if type(clock) is SystemClock:
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                await awaitable
        except TimeoutError:
            if not limit.expired():
                raise  # the awaitable's own error
            return False
        return True
    work = asyncio.ensure_future(awaitable)
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait((work, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        if not work.done():
            work.cancel()
        await asyncio.wait((work, sleeper))
    if work.cancelled():
        return False
    work.result()  # re-raise its error
    return True
