"""The workload driver (with a fake router) and the round-robin router (with in-process nodes)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from swarm._errors import InvalidInputError, NoProviderError, OverloadedError, UnavailableError
from swarm.client import GenerationChunk
from swarm.simnet._scenario import ChatMix, ModelMix, PlannedChat, PlannedRequest, Workload
from swarm.simnet._workload import (
    CHAT_PROMPTS,
    Endpoint,
    Recorder,
    RoundRobinRouter,
    RoutedResult,
    drive,
    drive_chats,
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


# --------------------------------------------------------------------------- chat traffic

SMOL = "builtin/smollm2"


class FakeChatRouter:
    """Streams chunks of `sizes` tokens `gap` seconds apart, from node-a (even chats) or
    node-b; `fail[k]` is raised by chat k after `fail_after` chunks."""

    def __init__(self, sizes: tuple[int, ...] = (1, 1, 1), gap: float = 0.01,
                 fail: dict[int, BaseException] | None = None, fail_after: int = 0,
                 gate: asyncio.Event | None = None, expect: int = 0,
                 switch_after: int | None = None) -> None:
        self.sizes = sizes
        self.gap = gap
        self.fail = fail or {}
        self.fail_after = fail_after
        self.gate = gate
        self.expect = expect
        self.switch_after = switch_after
        self.calls: list[tuple[str, str, int, float, float]] = []
        self.called = asyncio.Event()
        self.closed = 0

    async def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int,
                   temperature: float, timeout: float) -> AsyncIterator[GenerationChunk]:
        key = len(self.calls)
        self.calls.append((model, messages[0]["content"], max_tokens, temperature, timeout))
        if len(self.calls) == self.expect:
            self.called.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            endpoint = "node-a" if key % 2 == 0 else "node-b"
            for i, n in enumerate(self.sizes):
                if key in self.fail and i == self.fail_after:
                    raise self.fail[key]
                if self.switch_after is not None and i == self.switch_after:
                    endpoint = "node-b"
                await asyncio.sleep(self.gap)
                final = i == len(self.sizes) - 1
                yield GenerationChunk("x" * n, tuple(range(n)), final, endpoint,
                                      "length" if final else None)
        finally:
            self.closed += 1


def chat_plan(n: int, gap: float, mix: int = 0) -> list[PlannedChat]:
    return [PlannedChat(i, i * gap, mix, i) for i in range(n)]


CHATS = Workload(models=(ModelMix(MLP),),
                 chats=(ChatMix(SMOL, max_tokens=7, temperature=0.5, timeout=2.0),))


async def run_chats(router: Any, chats: list[PlannedChat], workload: Workload = CHATS,
                    recorder: Recorder | None = None) -> Recorder:
    recorder = recorder or Recorder()
    await drive_chats(chats, workload, router, recorder,
                      node_of={"node-a": 0, "node-b": 1}.get)
    return recorder


async def test_chats_record_ttft_gaps_tokens_and_provider() -> None:
    router = FakeChatRouter(sizes=(2, 1, 3), gap=0.02)
    recorder = await run_chats(router, chat_plan(4, 0.01))
    assert recorder.records == []
    chats = sorted(recorder.chats, key=lambda c: c.index)
    assert [c.outcome for c in chats] == ["ok"] * 4
    assert [c.node for c in chats] == [0, 1, 0, 1]
    for c in chats:
        assert c.tokens == 6
        assert c.finish_reason == "length"
        assert c.providers == 1
        assert c.ttft is not None
        assert c.latency is not None
        assert c.sent is not None
        assert 0.02 <= c.ttft < c.latency
        # The first chunk's two tokens have no gap; the 3-token chunk's gap is spread.
        assert len(c.itl) == 4
        assert c.itl[1] == c.itl[2] == c.itl[3]
        assert c.itl[0] >= 0.015
        assert c.itl[1] * 3 >= 0.015
    # The shipped prompts, picked by the plan; the table's settings; the remaining time.
    assert [call[1] for call in router.calls] == [CHAT_PROMPTS[i] for i in range(4)]
    assert all(call[0] == SMOL and call[2:4] == (7, 0.5) for call in router.calls)
    assert all(0 < call[4] <= 2.0 for call in router.calls)
    assert recorder.chats_in_flight == 0
    assert router.closed == 4


async def test_a_chat_tables_own_prompts_are_used() -> None:
    workload = Workload(chats=(ChatMix(SMOL), ChatMix(SMOL, prompts=("one", "two"))))
    router = FakeChatRouter()
    await run_chats(router, [PlannedChat(0, 0.0, 1, 5), PlannedChat(1, 0.0, 1, 2)], workload)
    assert sorted(call[1] for call in router.calls) == ["one", "two"]


async def test_a_chat_resumed_elsewhere_counts_both_providers() -> None:
    recorder = await run_chats(FakeChatRouter(sizes=(1, 1, 1, 1), switch_after=2),
                               chat_plan(1, 0.0))
    (chat,) = recorder.chats
    assert (chat.outcome, chat.node, chat.providers, chat.tokens) == ("ok", 1, 2, 4)


async def test_chat_failures_keep_what_streamed() -> None:
    router = FakeChatRouter(sizes=(1, 1, 1), fail={0: UnavailableError("died"),
                                                   1: InvalidInputError("bad")}, fail_after=2)
    recorder = await run_chats(router, chat_plan(3, 0.0))
    by_index = {c.index: c for c in recorder.chats}
    assert [by_index[i].outcome for i in range(3)] == ["UNAVAILABLE", "INVALID_ARGUMENT", "ok"]
    assert by_index[0].tokens == by_index[1].tokens == 2
    assert by_index[0].node == 0
    assert by_index[0].finish_reason is None
    assert router.closed == 3


async def test_chats_beyond_max_in_flight_are_shed_and_deadlines_end_them() -> None:
    gate = asyncio.Event()
    workload = Workload(chats=(ChatMix(SMOL, max_in_flight=2, timeout=0.2),))
    router = FakeChatRouter(gate=gate, expect=2)
    recorder = Recorder()
    driving = asyncio.create_task(run_chats(router, chat_plan(4, 0.0), workload, recorder))
    async with asyncio.timeout(5):
        await router.called.wait()
    assert recorder.chats_in_flight == 2
    await driving  # the gate never opens: both end at their deadline
    outcomes = sorted(c.outcome for c in recorder.chats)
    assert outcomes == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "SHED", "SHED"]
    assert all(c.sent is None and c.latency is None for c in recorder.chats if c.outcome == "SHED")
    assert recorder.chats_in_flight == 0


async def test_cancelling_the_chat_drive_records_chats_in_flight() -> None:
    router = FakeChatRouter(gate=asyncio.Event(), expect=2)
    recorder = Recorder()
    driving = asyncio.create_task(run_chats(router, chat_plan(2, 0.0), recorder=recorder))
    async with asyncio.timeout(5):
        await router.called.wait()
    driving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driving
    assert [c.outcome for c in recorder.chats] == ["CANCELLED"] * 2
    assert recorder.chats_in_flight == 0


class FakeNodeClient:
    """Stands in for AsyncClient(address) in the round-robin router: chat_chunks."""

    def __init__(self, address: str, behaviour: BaseException | tuple[int, BaseException | None]
                 ) -> None:
        self.address = address
        self.behaviour = behaviour

    async def chat_chunks(self, model: str, messages: Any, **options: Any
                          ) -> AsyncIterator[GenerationChunk]:
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        count, error = self.behaviour
        for i in range(count):
            yield GenerationChunk("t", (i,), i == count - 1 and error is None, self.address)
        if error is not None:
            raise error

    async def close(self) -> None:
        pass


async def chat_through(router: RoundRobinRouter) -> list[GenerationChunk]:
    return [c async for c in router.chat(SMOL, [{"role": "user", "content": "hi"}],
                                         max_tokens=4, temperature=0.0, timeout=5.0)]


async def test_round_robin_chat_fails_over_before_the_first_chunk_only() -> None:
    behaviour: dict[str, Any] = {"a": UnavailableError("down"), "b": (2, None),
                                 "c": (1, UnavailableError("died")), "d": OverloadedError("full")}
    endpoints = [Endpoint(name, frozenset({SMOL})) for name in "abcd"]
    router = RoundRobinRouter(lambda: endpoints)
    router._client = lambda address: FakeNodeClient(address, behaviour[address])  # type: ignore[assignment,method-assign,return-value]
    first = await chat_through(router)  # starts at a: refused, b answers
    assert [c.endpoint for c in first] == ["b", "b"]
    assert [c.endpoint for c in await chat_through(router)] == ["b", "b"]  # starts at b
    with pytest.raises(UnavailableError, match="died"):  # c broke off mid-stream: no retry
        await chat_through(router)
    # d refuses, a refuses, b answers
    assert [c.endpoint for c in await chat_through(router)] == ["b", "b"]
    with pytest.raises(NoProviderError):
        [c async for c in router.chat("acme/none", [], max_tokens=1, temperature=0.0,
                                      timeout=1.0)]
