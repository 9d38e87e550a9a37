"""Virtual time for asyncio: an event loop whose clock jumps instead of sleeping.

`VirtualTimeLoop.time()` is a number the loop advances itself: whenever no
callback is ready, it jumps straight to the next timer. `asyncio.sleep(3600)`
returns at once in wall time with `loop.time()` one hour later, and every run
of the same program fires its timers in the same order (timers due at the same
instant fire in the order they were scheduled).

Only the loop's own machinery exists in virtual time: sockets, pipes,
subprocesses, signal handlers and executor threads are refused with
`VirtualTimeError`. When nothing is ready and no timer is pending, nothing can
ever happen again, so the loop raises `DeadlockError` rather than hang.

`run_virtual(main())` is `asyncio.run` on such a loop; `VirtualClock` is the
injected `Clock` (swarm._clock) that reads it.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextvars import Context
from typing import Any, NoReturn, TypeVar, TypeVarTuple, Unpack

from swarm._errors import SwarmError

__all__ = [
    "DEFAULT_EPOCH",
    "DeadlockError",
    "VirtualClock",
    "VirtualTimeError",
    "VirtualTimeLoop",
    "run_virtual",
]

# Unix time at virtual time 0 (the same offset as swarm._clock.FakeClock).
DEFAULT_EPOCH = 1_795_000_000.0

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class VirtualTimeError(SwarmError):
    """Code did something virtual time cannot simulate (real I/O, threads, signals)."""


class DeadlockError(VirtualTimeError):
    """No callback is ready and no timer is pending: nothing can ever run again."""


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio event loop on virtual time (see the module docstring).

    `start` is the initial `time()`; `epoch` is the Unix time of virtual 0 that
    `VirtualClock.time()` adds.
    """

    # BaseEventLoop internals this loop works with (not in the type stubs).
    _ready: deque[asyncio.Handle]
    _stopping: bool
    _timer_cancelled_count: int
    _check_closed: Callable[[], None]

    def __init__(self, start: float = 0.0, *, epoch: float = DEFAULT_EPOCH) -> None:
        super().__init__()
        self._now = float(start)
        self._epoch = epoch
        # Timers as (when, sequence, handle): tuples compare in C, and the sequence
        # makes timers due at the same instant fire in the order they were set.
        # (BaseEventLoop's own heap compares TimerHandles in Python, by deadline only.)
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._jumps = 0
        self._callbacks = 0

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._now

    @property
    def epoch(self) -> float:
        """Unix time at virtual time 0 (what VirtualClock.time() adds)."""
        return self._epoch

    @property
    def jumps(self) -> int:
        """How many times the clock has moved forward."""
        return self._jumps

    @property
    def callbacks(self) -> int:
        """How many callbacks (task steps, timers, call_soon) have run."""
        return self._callbacks

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object],
                *args: *_Ts, context: Context | None = None) -> asyncio.TimerHandle:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        if self.get_debug():
            timer = asyncio.TimerHandle(when, callback, args, self, context)
        else:
            timer = _Timer(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        timer._scheduled = True  # type: ignore[attr-defined]  # lets cancel() count it
        return timer

    def call_later(self, delay: float, callback: Callable[[Unpack[_Ts]], object],
                   *args: *_Ts, context: Context | None = None) -> asyncio.TimerHandle:
        # BaseEventLoop.call_later less a layer: simulations schedule millions of timers.
        return self.call_at(self._now + delay, callback, *args, context=context)

    def _run_once(self) -> None:
        # BaseEventLoop._run_once, minus the selector: where a real loop would
        # block in select() until the next timer, the clock jumps to it.
        if (self._timer_cancelled_count > 100
                and self._timer_cancelled_count * 2 > len(self._timers)):
            self._drop_cancelled()  # replaces self._timers: read it only after this
        timers, ready = self._timers, self._ready
        if not ready and not self._stopping:
            while timers and timers[0][2]._cancelled:
                self._forget(heapq.heappop(timers)[2])
            if not timers:
                raise DeadlockError(self._deadlock_report())
            if timers[0][0] > self._now:
                self._now = timers[0][0]
                self._jumps += 1
        now = self._now
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            self._forget(timer)
            ready.append(timer)
        # Run what is ready now; what these callbacks schedule runs next time round.
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                self._callbacks += 1
                handle._run()

    def _forget(self, timer: asyncio.TimerHandle) -> None:
        if timer._cancelled:
            self._timer_cancelled_count -= 1
        timer._scheduled = False  # type: ignore[attr-defined]

    def _drop_cancelled(self) -> None:
        live = []
        for entry in self._timers:
            if entry[2]._cancelled:
                entry[2]._scheduled = False  # type: ignore[attr-defined]
            else:
                live.append(entry)
        heapq.heapify(live)
        self._timers = live
        self._timer_cancelled_count = 0

    def _write_to_self(self) -> None:
        # call_soon_threadsafe wakes a real loop's select(); this loop never blocks.
        pass

    def close(self) -> None:
        super().close()
        self._timers.clear()

    def _deadlock_report(self) -> str:
        pending = sorted(asyncio.all_tasks(self), key=lambda t: t.get_name())
        lines = [f"deadlock at virtual time {self._now:.6f}: nothing is ready, no timer "
                 f"is pending, {len(pending)} task(s) wait forever"]
        lines += [f"  {task!r}" for task in pending[:10]]
        if len(pending) > 10:
            lines.append(f"  ... and {len(pending) - 10} more")
        return "\n".join(lines)


class _Timer(asyncio.TimerHandle):
    """A TimerHandle made without Handle.__init__'s debug checks (the loop is not in debug
    mode): a third of the cost of scheduling a timer."""

    __slots__ = ()

    def __init__(self, when: float, callback: Callable[..., object], args: Sequence[Any],
                 loop: asyncio.AbstractEventLoop, context: Context | None) -> None:
        # The attributes Handle.__init__ and TimerHandle.__init__ set (CPython 3.11).
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._loop = loop
        self._source_traceback = None
        self._repr = None
        self._context = contextvars.copy_context() if context is None else context
        self._when = when
        self._scheduled = False


def _refused(name: str) -> Callable[..., NoReturn]:
    def refuse(self: VirtualTimeLoop, *args: object, **kwargs: object) -> NoReturn:
        raise VirtualTimeError(
            f"loop.{name}() needs real I/O, threads or signals, which virtual time cannot "
            f"simulate; use the in-memory transports (swarm.protocol._memory) instead")

    refuse.__name__ = refuse.__qualname__ = name
    return refuse


_REFUSED = (
    "run_in_executor", "set_default_executor", "getaddrinfo", "getnameinfo",
    "create_connection", "create_server", "create_unix_connection", "create_unix_server",
    "create_datagram_endpoint", "connect_accepted_socket", "sendfile", "start_tls",
    "connect_read_pipe", "connect_write_pipe", "subprocess_exec", "subprocess_shell",
    "add_reader", "add_writer", "sock_recv", "sock_recv_into", "sock_recvfrom",
    "sock_recvfrom_into", "sock_sendall", "sock_sendto", "sock_connect", "sock_accept",
    "sock_sendfile", "add_signal_handler",
)
# Installed after the class body so each keeps the base signature for type checkers.
for _name in _REFUSED:
    setattr(VirtualTimeLoop, _name, _refused(_name))


class VirtualClock:
    """The `Clock` of a virtual-time loop: monotonic() is loop.time(), time() is epoch + it."""

    __slots__ = ("_loop",)

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    @classmethod
    def current(cls) -> VirtualClock:
        """The clock of the running loop (which must be a VirtualTimeLoop)."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualTimeLoop):
            raise VirtualTimeError(f"the running loop is {type(loop).__name__}, not virtual")
        return cls(loop)

    def monotonic(self) -> float:
        return self._loop.time()

    def time(self) -> float:
        return self._loop.epoch + self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the loop's timers are virtual


def run_virtual(main: Coroutine[Any, Any, _T], *, start: float = 0.0,
                epoch: float = DEFAULT_EPOCH) -> _T:
    """Run `main` to completion on a fresh VirtualTimeLoop and return its result.

    Like `asyncio.run`: leftover tasks are cancelled and async generators are
    finalized before the loop closes. Raises DeadlockError when `main` waits
    for something that can never happen.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start, epoch=epoch)) as runner:
        return runner.run(main)

