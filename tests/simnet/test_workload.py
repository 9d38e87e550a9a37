"""The workload driver (with a fake router) and the round-robin router (with in-process nodes)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import numpy as np
import pytest

from swarm._errors import InvalidInputError, NoProviderError, OverloadedError, UnavailableError
from swarm.simnet._scenario import ModelMix, PlannedRequest, Workload
from swarm.simnet._workload import (
    Endpoint,
    Recorder,
    RoundRobinRouter,
    RoutedResult,
    drive,
    make_inputs,
)
from tests.conftest import NodeFactory

MLP = "builtin/mlp"
WORKLOAD = Workload(models=(ModelMix(MLP),), timeout=2.0)


class FakeRouter:
    """Answers after `delay`, or raises what `fail` says for a request's first input value."""

    def __init__(self, delay: float = 0.0, gate: asyncio.Event | None = None,
                 fail: dict[int, BaseException] | None = None, expect: int = 0,
                 price: float | None = None) -> None:
        self.delay = delay
        self.price = price
        self.gate = gate
        self.fail = fail or {}
        self.calls: list[float] = []
        self.expect = expect
        # Set once `expect` calls have come in.
        self.called = asyncio.Event()

    async def infer(self, model: str, inputs: Any, *, timeout: float) -> RoutedResult:
        key = len(self.calls)
        self.calls.append(timeout)
        if len(self.calls) == self.expect:
            self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if key in self.fail:
            raise self.fail[key]
        return RoutedResult("node-a" if key % 2 == 0 else "node-b", inputs, attempts=1,
                            price=self.price)


def plan(n: int, gap: float) -> list[PlannedRequest]:
    return [PlannedRequest(i, i * gap, MLP) for i in range(n)]


async def run(router: Any, requests: list[PlannedRequest], workload: Workload = WORKLOAD,
              recorder: Recorder | None = None) -> Recorder:
    recorder = recorder or Recorder()
    await drive(requests, workload, router, recorder, rng=np.random.default_rng(0),
                node_of={"node-a": 0, "node-b": 1}.get,
                price_of=lambda node, items: 10.0 * (node + 1) * items)
    return recorder


async def test_open_loop_sends_without_waiting_for_answers() -> None:
    gate = asyncio.Event()
    router = FakeRouter(gate=gate, expect=10)
    recorder = Recorder()
    driving = asyncio.create_task(run(router, plan(10, 0.01), recorder=recorder))
    async with asyncio.timeout(10):
        await router.called.wait()  # all ten sent while none has been answered
    assert recorder.records == []
    assert recorder.in_flight == 10
    gate.set()
    await driving
    records = sorted(recorder.records, key=lambda r: r.index)
    assert [r.outcome for r in records] == ["ok"] * 10
    assert all(r.sent is not None and r.sent >= r.scheduled for r in records)
    assert all(r.latency is not None and r.latency > 0 for r in records)
    assert [r.node for r in records] == [0, 1] * 5
    assert [r.price for r in records] == [10.0, 20.0] * 5
    assert recorder.in_flight == 0


async def test_a_price_the_router_reports_wins() -> None:
    recorder = await run(FakeRouter(price=1.5), plan(2, 0.0))
    assert [r.price for r in recorder.records] == [1.5, 1.5]


async def test_deadline_is_passed_down_as_the_remaining_time() -> None:
    router = FakeRouter()
    await run(router, plan(3, 0.05))
    assert all(0 < t <= WORKLOAD.timeout for t in router.calls)


async def test_requests_beyond_max_in_flight_are_shed() -> None:
    gate = asyncio.Event()
    recorder = Recorder()
    workload = Workload(models=(ModelMix(MLP),), max_in_flight=3)
    router = FakeRouter(gate=gate, expect=3)
    driving = asyncio.create_task(run(router, plan(5, 0.0), workload, recorder))
    async with asyncio.timeout(5):
        await router.called.wait()
    assert recorder.in_flight == 3
    assert len(recorder.records) == 2
    gate.set()
    await driving
    outcomes = sorted(r.outcome for r in recorder.records)
    assert outcomes == ["SHED", "SHED", "ok", "ok", "ok"]
    shed = [r for r in recorder.records if r.outcome == "SHED"]
    assert all(r.sent is None and r.latency is None for r in shed)


async def test_failures_are_recorded_by_kind() -> None:
    router = FakeRouter(fail={0: UnavailableError("x"), 1: NoProviderError("y"),
                              2: InvalidInputError("z"), 3: RuntimeError("bug")})
    recorder = await run(router, plan(5, 0.0))
    by_index = {r.index: r for r in recorder.records}
    # Requests start in plan order, so call k is request k.
    assert [by_index[i].outcome for i in range(5)] == [
        "UNAVAILABLE", "NO_PROVIDER", "INVALID_ARGUMENT", "RUNTIMEERROR", "ok"]
    assert all(by_index[i].node is None and by_index[i].price is None for i in range(4))


async def test_a_request_that_never_answers_ends_at_its_deadline() -> None:
    workload = Workload(models=(ModelMix(MLP),), timeout=0.05)
    recorder = await run(FakeRouter(gate=asyncio.Event()), plan(1, 0.0), workload)
    (record,) = recorder.records
    assert record.outcome == "DEADLINE_EXCEEDED"


async def test_cancelling_the_drive_records_in_flight_requests() -> None:
    recorder = Recorder()
    router = FakeRouter(gate=asyncio.Event(), expect=3)
    driving = asyncio.create_task(run(router, plan(3, 0.0), recorder=recorder))
    async with asyncio.timeout(5):
        await router.called.wait()
    driving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driving
    assert sorted(r.outcome for r in recorder.records) == ["CANCELLED"] * 3
    assert recorder.in_flight == 0


def test_inputs_by_kind() -> None:
    rng = np.random.default_rng(1)
    texts = make_inputs(ModelMix("builtin/minilm", inputs="text"), 3, rng)
    assert texts.dtype == object
    assert texts.shape == (3,)
    assert isinstance(texts[0], bytes)
    vectors = make_inputs(ModelMix(MLP, dim=16), 2, rng)
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 16)


# --------------------------------------------------------------------------- real router


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_round_robin_fails_over_past_a_dead_node(start_node: NodeFactory, mlp: Any) -> None:
    async with start_node(models=[mlp]) as node:
        live = node.grpc_address
        dead = dead_address()
        router = RoundRobinRouter(lambda: [Endpoint(dead, frozenset({MLP})),
                                           Endpoint(live, frozenset({MLP}))])
        try:
            x = np.ones((1, 512), np.float32)
            results = [await router.infer(MLP, x, timeout=5.0) for _ in range(4)]
        finally:
            await router.aclose()
    assert {r.node for r in results} == {live}
    assert sorted(r.attempts for r in results) == [1, 1, 2, 2]
    assert all(np.asarray(r.outputs).shape == (1, 512) for r in results)


async def test_round_robin_spreads_and_respects_models(start_node: NodeFactory, mlp: Any) -> None:
    async with start_node(models=[mlp]) as a, start_node(models=[mlp]) as b:
        endpoints = [Endpoint(a.grpc_address, frozenset({MLP})),
                     Endpoint(b.grpc_address, frozenset({MLP})),
                     Endpoint(dead_address(), frozenset({"builtin/minilm"}))]
        router = RoundRobinRouter(lambda: endpoints)
        try:
            x = np.ones((2, 512), np.float32)
            served = [(await router.infer(MLP, x, timeout=5.0)).node for _ in range(4)]
            assert served.count(a.grpc_address) == 2
            assert served.count(b.grpc_address) == 2
            with pytest.raises(NoProviderError):
                await router.infer("acme/none", x, timeout=1.0)
            with pytest.raises(InvalidInputError):  # never retried elsewhere
                await router.infer(MLP, np.ones((1, 3), np.float32), timeout=5.0)
        finally:
            await router.aclose()


async def test_round_robin_reports_the_last_error_when_every_node_fails() -> None:
    router = RoundRobinRouter(lambda: [Endpoint(dead_address(), frozenset({MLP}))] * 2)
    try:
        with pytest.raises((UnavailableError, OverloadedError)):
            await router.infer(MLP, np.ones((1, 512), np.float32), timeout=5.0)
    finally:
        await router.aclose()
