"""The asyncio Batcher over a controllable fake model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from swarm._clock import FakeClock
from swarm._errors import DeadlineExceededError, InferenceError, InvalidInputError, OverloadedError
from swarm._types import Digest
from swarm.node._batching import Batcher, BatcherHooks, BatchPolicy, BatchTiming
from swarm.node._runtime import Model, ModelSpec, TensorSpec
from tests.waiting import wait_until


class FakeModel(Model):
    """Doubles its input; each execution blocks until `gate` is set (if given)."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        import torch

        self.name = "test/fake"
        self.digest = Digest.of(b"fake")
        self.spec = ModelSpec((TensorSpec("x", "FP32", (-1, 2)),),
                              (TensorSpec("y", "FP32", (-1, 2)),), 8, "test")
        self.device = torch.device("cpu")
        self.gate = gate
        self.fail = fail
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.started = threading.Event()

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(inputs["x"]))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"x": np.zeros((batch_size, 2), np.float32)}


def row(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), value, np.float32)}


@pytest.fixture
def policy() -> BatchPolicy:
    return BatchPolicy(max_batch_size=8, max_queue_delay=0.05, max_queue_size=16)


async def run_batcher(batcher: Batcher) -> asyncio.Task[None]:
    return asyncio.create_task(batcher.run())  # submit() queues whether or not it started


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_results_return_to_their_own_requests(policy: BatchPolicy) -> None:
    model = FakeModel()
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    results = await asyncio.gather(*(batcher.submit(row(i), 1) for i in range(6)))
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 2 * i))
    await stop(task)


async def test_next_batch_forms_while_current_one_runs(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    first = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    # While the first batch executes, five more requests arrive.
    rest = [asyncio.create_task(batcher.submit(row(i), 1)) for i in range(1, 6)]
    await wait_until(lambda: batcher.queue_depth == 5, what="five requests queued")
    gate.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [1, 5]
    await stop(task)


async def test_model_executes_off_the_event_loop(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    pending = asyncio.create_task(batcher.submit(row(1), 1))
    await asyncio.to_thread(model.started.wait, 5)
    # The loop still runs while the model is blocked in execute(): these real timers
    # firing is what the test checks, not a wait for something else.
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.001)
        ticks += 1
    assert ticks == 5
    assert not pending.done()
    assert threading.current_thread().name not in model.threads
    gate.set()
    await pending
    await stop(task)


async def test_lone_request_does_not_wait_out_the_delay() -> None:
    policy = BatchPolicy(max_batch_size=8, max_queue_delay=2.0)
    clock = FakeClock()  # never moved: a batcher that waited out the delay would hang
    batcher = Batcher(FakeModel(), policy, clock=clock)
    task = await run_batcher(batcher)
    lone = asyncio.create_task(batcher.submit(row(1), 1))
    await wait_until(lone, what="the lone request's answer, with the clock standing still")
    assert lone.result().outputs["y"][0, 0] == 2
    await stop(task)


async def test_full_queue_is_refused_with_overloaded(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    small = BatchPolicy(max_batch_size=1, max_queue_size=2)
    batcher = Batcher(model, small)
    task = await run_batcher(batcher)
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    queued = [asyncio.create_task(batcher.submit(row(i), 1)) for i in (1, 2)]
    await wait_until(lambda: batcher.queue_depth == 2, what="the queue full")
    with pytest.raises(OverloadedError):
        await batcher.submit(row(3), 1)
    gate.set()
    await asyncio.gather(running, *queued)
    await stop(task)


async def test_expired_request_is_answered_without_computing(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    expired: list[int] = []
    clock = FakeClock()
    batcher = Batcher(model, policy, clock=clock, hooks=BatcherHooks(on_expired=expired.append))
    task = await run_batcher(batcher)
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    now = clock.monotonic()
    doomed = asyncio.create_task(batcher.submit(row(7), 1, deadline=now + 0.02))
    alive = asyncio.create_task(batcher.submit(row(8), 1, deadline=now + 30))
    await wait_until(lambda: batcher.queue_depth == 2, what="both requests queued")
    # Doomed's deadline passes while it is queued.
    clock.advance(1.0)
    gate.set()
    await running
    # The model is free: both wait out the delay for company from now (there is none).
    clock.advance(1.0)
    with pytest.raises(DeadlineExceededError):
        await doomed
    result = await alive
    assert result.outputs["y"][0, 0] == 16
    assert model.batches == [1, 1]  # the expired request never reached the model
    assert expired == [1]
    await stop(task)


async def test_deadline_already_passed_is_refused_at_once(policy: BatchPolicy) -> None:
    model = FakeModel()
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(row(1), 1, deadline=time.monotonic() - 1)  # the default clock
    assert model.batches == []
    await stop(task)


async def test_cancelled_request_is_skipped(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    gone = asyncio.create_task(batcher.submit(row(1), 1))
    kept = asyncio.create_task(batcher.submit(row(2, 3), 3))
    await wait_until(lambda: batcher.queue_depth == 2, what="both requests queued")
    gone.cancel()
    gate.set()
    await asyncio.gather(running, kept)
    assert model.batches == [1, 3]
    await stop(task)


async def test_batch_never_exceeds_max_and_oversized_request_is_refused() -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, BatchPolicy(max_batch_size=4, max_queue_delay=0.0))
    task = await run_batcher(batcher)
    with pytest.raises(InvalidInputError):
        await batcher.submit(row(0, 5), 5)
    first = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    rest = [asyncio.create_task(batcher.submit(row(i, 3), 3)) for i in range(3)]
    await wait_until(lambda: batcher.queue_depth == 3, what="three requests queued")
    gate.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [1, 3, 3, 3]
    await stop(task)


async def test_model_failure_fails_its_batch_and_batcher_survives(policy: BatchPolicy) -> None:
    model = FakeModel(fail=True)
    timings: list[BatchTiming] = []
    batcher = Batcher(model, policy, hooks=BatcherHooks(on_batch=timings.append))
    task = await run_batcher(batcher)
    with pytest.raises(InferenceError) as info:
        await batcher.submit(row(1), 1)
    assert info.value.code == "INTERNAL"
    model.fail = False
    result = await batcher.submit(row(2), 1)
    assert result.outputs["y"][0, 0] == 4
    assert [t.batch_size for t in timings] == [1]
    await stop(task)


async def test_cancelling_the_batcher_fails_what_is_queued(policy: BatchPolicy) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, policy)
    task = await run_batcher(batcher)
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await asyncio.to_thread(model.started.wait, 5)
    queued = asyncio.create_task(batcher.submit(row(1), 1))
    await wait_until(lambda: batcher.queue_depth == 1, what="a request queued")
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    results = await asyncio.gather(running, queued, return_exceptions=True)
    assert any(isinstance(r, InferenceError) and r.code == "UNAVAILABLE" for r in results)
