"""In-memory gossip flood and virtual-time loop throughput.

    .venv/bin/python bench/memory_bench.py [--hosts 1000] [--repeat 5]

flood    one message flooded to every host of a MemoryNetwork (degree 6),
         publish -> last delivery, on asyncio's real loop and on the virtual loop,
         with the default 0.5 ms per hop and with a WAN-like lognormal latency
         (40 ms median); wall time and virtual time
vloop    callbacks per wall second of VirtualTimeLoop: tasks sleeping random
         durations, and bare call_later timers
Prints a Markdown table; the best of --repeat runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from swarm._types import PeerId
from swarm.protocol import Identity
from swarm.protocol.testing import MemoryNetwork, lognormal_delay
from swarm.simnet._vloop import VirtualTimeLoop, run_virtual


def peer_ids(n: int) -> list[PeerId]:
    return [Identity.from_seed(hashlib.sha256(f"bench:{i}".encode()).digest()).peer_id
            for i in range(n)]


async def flood(peers: list[PeerId], wan: bool) -> tuple[float, float, float, int]:
    loop = asyncio.get_running_loop()
    net = MemoryNetwork(1)
    hosts = [net.join(p) for p in peers]
    if wan:
        net.set_route(lognormal_delay(0.040, 0.5))
    wall, cpu, virtual = time.perf_counter(), time.process_time(), loop.time()
    await hosts[0].publish("bench", b"x" * 300)
    await net.settle()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    virtual = loop.time() - virtual
    assert all(h.stats().delivered == 1 for h in hosts)
    return wall, cpu, virtual, sum(h.stats().messages_sent for h in hosts)


async def sleepers(tasks: int = 1000, sleeps: int = 100) -> None:
    async def one(rng: random.Random) -> None:
        for _ in range(sleeps):
            await asyncio.sleep(rng.random())

    rng = random.Random(1)
    async with asyncio.TaskGroup() as tg:
        for _ in range(tasks):
            tg.create_task(one(random.Random(rng.random())))


async def timers(n: int = 100_000) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(2)
    done = asyncio.Event()
    left = n

    def fire() -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set()

    for _ in range(n):
        loop.call_later(rng.random() * 100, fire)
    await done.wait()


def run_flood(peers: list[PeerId], wan: bool, virtual_time: bool) -> tuple[float, ...]:
    return run_virtual(flood(peers, wan)) if virtual_time else asyncio.run(flood(peers, wan))


def best(repeat: int, fn: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
    return min((fn() for _ in range(repeat)), key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    peers = peer_ids(args.hosts)

    print(f"| flood to {args.hosts} hosts | wall ms | cpu ms | virtual ms | transmissions |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for wan in (False, True):
        latency = "lognormal 40 ms" if wan else "0.5 ms/hop"
        for name, virtual_time in (("real loop", False), ("virtual loop", True)):
            if wan and not virtual_time:
                continue  # it would just sleep through the latency
            once = functools.partial(run_flood, peers, wan, virtual_time)
            wall, cpu, virtual, sent = best(args.repeat, once)
            print(f"| {name}, {latency} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {virtual * 1e3:.1f} "
                  f"| {sent:.0f} |")

    print("\n| virtual loop | callbacks | wall s | cpu s | callbacks/s (cpu) | virtual s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, work in (("1000 tasks x 100 random sleeps", sleepers),
                       ("100k call_later timers", timers)):
        def measure(work: Callable[[], Coroutine[Any, Any, None]] = work) -> tuple[float, ...]:
            with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
                t, c = time.perf_counter(), time.process_time()
                runner.run(work())
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                loop = runner.get_loop()
                assert isinstance(loop, VirtualTimeLoop)
                return wall, cpu, loop.callbacks, loop.time()

        wall, cpu, callbacks, virtual = best(args.repeat, measure)
        print(f"| {name} | {callbacks:.0f} | {wall:.2f} | {cpu:.2f} | {callbacks / cpu:,.0f} "
              f"| {virtual:.0f} |")


if __name__ == "__main__":
    main()
