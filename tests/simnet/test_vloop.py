"""The virtual-time event loop: instant sleeps, deterministic timers, asyncio primitives,
refusal of real I/O, deadlock detection, and the in-memory network running on it."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import pytest

from swarm._clock import Clock
from swarm._types import PeerId
from swarm.protocol import GossipMessage, Identity, Validation, Validator
from swarm.protocol.testing import MemoryNetwork, lognormal_delay
from swarm.simnet import DeadlockError, VirtualClock, VirtualTimeError, VirtualTimeLoop, run_virtual
from swarm.simnet._vloop import DEFAULT_EPOCH


def test_hours_of_sleep_take_no_wall_time() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        t0 = loop.time()
        await asyncio.sleep(3 * 3600)
        t1 = loop.time()
        await asyncio.sleep(10 * 86400)  # longer than asyncio's one-day select cap
        return t0, t1, loop.time()

    wall = time.perf_counter()
    assert run_virtual(main(), start=100.0) == (100.0, 100.0 + 3 * 3600, 100.0 + 3 * 3600 + 864000)
    assert time.perf_counter() - wall < 0.5


def test_time_does_not_move_while_work_is_ready() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = []
        for _ in range(100):
            await asyncio.sleep(0)
            seen.append(loop.time())
        return seen

    assert set(run_virtual(main())) == {0.0}


def _timer_order() -> list[tuple[float, str]]:
    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, str]] = []
        done = asyncio.Event()
        delays = [3.0, 1.0, 2.0, 1.0, 0.0, 2.0, 1.0, 3.0]

        def fire(name: str) -> None:
            fired.append((loop.time(), name))

        for i, d in enumerate(delays):
            loop.call_later(d, fire, f"t{i}")
        cancelled = loop.call_later(1.0, fire, "cancelled")
        cancelled.cancel()
        loop.call_at(3.0, done.set)
        await done.wait()
        return fired

    return run_virtual(main())


def test_timers_fire_by_deadline_then_in_scheduling_order() -> None:
    order = _timer_order()
    assert order == [(0.0, "t4"), (1.0, "t1"), (1.0, "t3"), (1.0, "t6"), (2.0, "t2"),
                     (2.0, "t5"), (3.0, "t0"), (3.0, "t7")]
    assert _timer_order() == order


def test_many_tasks_interleave_identically_on_every_run() -> None:
    def trace() -> list[tuple[float, int]]:
        async def worker(n: int, rng: random.Random, out: list[tuple[float, int]]) -> None:
            loop = asyncio.get_running_loop()
            for _ in range(20):
                await asyncio.sleep(rng.choice([0.0, 0.001, 0.5, 1.0]))
                out.append((loop.time(), n))

        async def main() -> list[tuple[float, int]]:
            rng = random.Random(9)
            out: list[tuple[float, int]] = []
            async with asyncio.TaskGroup() as tg:
                for n in range(50):
                    tg.create_task(worker(n, random.Random(rng.random()), out))
            return out

        return run_virtual(main())

    first = trace()
    assert len(first) == 1000
    assert first == trace()
    assert [t for t, _ in first] == sorted(t for t, _ in first)


def test_timeouts_events_queues_and_taskgroups() -> None:
    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        result: dict[str, object] = {}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), timeout=5)
        result["wait_for"] = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.Event().wait()
        result["timeout"] = loop.time()

        event = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
        got: list[tuple[float, int]] = []

        async def producer() -> None:
            for i in range(5):
                await asyncio.sleep(1)
                await queue.put(i)
            await event.wait()
            await queue.put(-1)

        async def consumer() -> None:
            while (item := await queue.get()) >= 0:
                got.append((loop.time(), item))
                await asyncio.sleep(3)  # slower than the producer: the queue fills

        async def setter() -> None:
            await asyncio.sleep(30)
            event.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(producer())
            tg.create_task(consumer())
            tg.create_task(setter())
        result["queue"] = got
        result["end"] = loop.time()
        return result

    result = run_virtual(main())
    assert result["wait_for"] == 5.0
    assert result["timeout"] == 7.0
    assert result["queue"] == [(8.0, 0), (11.0, 1), (14.0, 2), (17.0, 3), (20.0, 4)]
    assert result["end"] == 37.0  # the setter fires at 7 + 30; the consumer drains at once


def test_results_exceptions_and_leftover_tasks_behave_like_asyncio_run() -> None:
    async def fails() -> None:
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_virtual(fails())

    cleaned: list[float] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(10**9)
        finally:
            cleaned.append(asyncio.get_running_loop().time())

    async def main() -> str:
        leftover = asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(5)
        assert not leftover.done()
        return "ok"

    assert run_virtual(main()) == "ok"
    assert cleaned == [5.0]  # cancelled at shutdown, before any time jump


def test_deadlock_raises_instead_of_hanging() -> None:
    async def waits_forever() -> None:
        await asyncio.sleep(10)
        await asyncio.Event().wait()

    with pytest.raises(DeadlockError, match=r"(?s)virtual time 10\.0+.*waits_forever"):
        run_virtual(waits_forever())

    async def each_waits_for_the_other() -> None:
        a, b = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            await a.wait()
            b.set()

        async def second() -> None:
            await b.wait()
            a.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(first(), name="first")
            tg.create_task(second(), name="second")

    with pytest.raises(DeadlockError, match=r"3 task\(s\)"):
        run_virtual(each_waits_for_the_other())

    async def empty_queue() -> int:
        return await asyncio.Queue[int]().get()

    with pytest.raises(DeadlockError):
        run_virtual(empty_queue())


def test_real_io_and_threads_are_refused() -> None:
    async def connect() -> None:
        await asyncio.open_connection("127.0.0.1", 9)

    async def thread() -> None:
        await asyncio.to_thread(time.sleep, 0)

    async def resolve() -> None:
        await asyncio.get_running_loop().getaddrinfo("localhost", 80)

    for coro in (connect(), thread(), resolve()):
        with pytest.raises(VirtualTimeError, match="virtual time cannot simulate"):
            run_virtual(coro)


def test_virtual_clock_is_the_loop_time() -> None:
    async def main() -> tuple[float, float, float, float]:
        clock: Clock = VirtualClock.current()
        before = (clock.monotonic(), clock.time())
        await asyncio.sleep(60)
        return (*before, clock.monotonic(), clock.time())

    assert run_virtual(main(), start=1000.0) == (
        1000.0, DEFAULT_EPOCH + 1000.0, 1060.0, DEFAULT_EPOCH + 1060.0)
    assert run_virtual(main(), epoch=0.0)[1] == 0.0

    async def on_a_real_loop() -> None:
        VirtualClock.current()

    with pytest.raises(VirtualTimeError, match="not virtual"):
        asyncio.run(on_a_real_loop())


def _peers(n: int) -> list[PeerId]:
    return [Identity.from_seed(hashlib.sha256(f"v:{i}".encode()).digest()).peer_id
            for i in range(n)]


def test_a_thousand_host_flood_with_wan_latency_runs_in_virtual_time() -> None:
    peers = _peers(1000)

    async def main() -> tuple[float, dict[PeerId, float], list[int]]:
        loop = asyncio.get_running_loop()
        net = MemoryNetwork(21, default_latency=0.001)
        hosts = [net.join(p) for p in peers]
        net.set_route(lognormal_delay(0.040, 0.5))  # ~40 ms median WAN hop, long tail
        first: dict[PeerId, float] = {}

        def arrival(me: PeerId) -> Validator:
            def validate(msg: GossipMessage) -> Validation:
                first[me] = loop.time()  # a validator runs once per host per message
                return Validation.ACCEPT
            return validate

        for h in hosts:
            h.set_validator("t", arrival(h.peer_id))
        await asyncio.sleep(3600)
        start = loop.time()
        await hosts[0].publish("t", b"x" * 300)
        await net.settle()
        return start, first, [h.stats().delivered for h in hosts]

    wall = time.perf_counter()
    start, first, delivered = run_virtual(main())
    wall = time.perf_counter() - wall
    assert delivered == [1] * 1000
    spread = max(first.values()) - start
    # Several hops of >= 1 ms each; a lognormal tail makes the last arrival much later.
    assert 0.1 < spread < 2.0
    assert min(t for p, t in first.items() if p != peers[0]) - start > 0.001
    assert wall < 5.0  # ~0.1 s here; the bound only catches a loop that really sleeps


def test_cancelled_timers_do_not_pile_up() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        for _ in range(5000):  # each timeout arms a timer an hour out, then cancels it
            async with asyncio.timeout(3600):
                await asyncio.sleep(0.001)
        return len(loop._timers)

    assert run_virtual(main()) < 300


def test_timers_run_once_even_when_cancelled_ones_are_swept() -> None:
    # Many cancelled timers make the loop rebuild its heap; a live timer due in that
    # same iteration must still run exactly once.
    runs: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handles = [loop.call_later(5.0 + i * 1e-3, runs.append, -1.0) for i in range(300)]
        loop.call_later(1.0, lambda: runs.append(loop.time()))
        for handle in handles:
            handle.cancel()
        await asyncio.sleep(2.0)

    run_virtual(main())
    assert runs == [1.0]
