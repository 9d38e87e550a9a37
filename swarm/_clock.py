"""Injected clocks. Components take a Clock instead of calling time.* directly.

`SystemClock` reads the machine; `FakeClock` is advanced by hand (tests, and the
virtual-time simulator drives the same components with it).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines, expiry)."""
        ...

    def time(self) -> float:
        """Unix time in seconds (timestamps that cross the network)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000.0, wall_offset: float = 1_795_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("time does not go back")
        self._now = now
