"""Local replicas: several instances of one model (one per device) share its queue.

No GPU here: two CPU instances stand for two devices.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from swarm.node._batching import Batcher, BatchPolicy
from tests.node.test_batcher import FakeModel, row, run_batcher, stop
from tests.waiting import wait_until


async def test_two_instances_share_the_queue_and_both_get_batches() -> None:
    gates = [threading.Event(), threading.Event()]
    first, second = FakeModel(gates[0]), FakeModel(gates[1])
    batcher = Batcher(first, BatchPolicy(max_batch_size=4, max_queue_delay=0.0))
    batcher.add_instance(second)
    assert batcher.instances == [first, second]
    task = await run_batcher(batcher)
    # One request: the first instance takes it; the second is still free.
    a = asyncio.create_task(batcher.submit(row(1), 1))
    await asyncio.to_thread(first.started.wait, 5)
    # The next goes to the free second instance at once, not after the first finishes.
    b = asyncio.create_task(batcher.submit(row(2), 1))
    await asyncio.to_thread(second.started.wait, 5)
    # Both busy: the rest queue (one queue, shared) and go to whichever frees first.
    rest = [asyncio.create_task(batcher.submit(row(i), 1)) for i in range(3, 9)]
    await wait_until(lambda: batcher.queue_depth == 6, what="six requests queued")
    assert batcher.executing_left >= 0.0
    gates[1].set()  # the second frees first: it takes the next batch
    await wait_until(lambda: len(second.batches) >= 2, what="the second instance's next batch")
    assert len(first.batches) == 1
    gates[0].set()
    results = await asyncio.gather(a, b, *rest)
    for value, result in zip([1, 2, *range(3, 9)], results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 2 * value))
    assert sum(first.batches) + sum(second.batches) == 8
    assert all(n >= 1 for n in batcher.batches_per_instance)
    await stop(task)


async def test_under_load_both_instances_execute_and_the_rate_counts_both() -> None:
    first, second = FakeModel(), FakeModel()
    batcher = Batcher(first, BatchPolicy(max_batch_size=2, max_queue_delay=0.0))
    batcher.add_instance(second)
    task = await run_batcher(batcher)
    results = await asyncio.gather(*(batcher.submit(row(i), 1) for i in range(40)))
    assert len(results) == 40
    assert first.batches
    assert second.batches
    assert batcher.items_per_second >= 0.0
    await stop(task)


async def test_removing_an_instance_keeps_the_last_and_loses_no_request() -> None:
    gate = threading.Event()
    first, second = FakeModel(), FakeModel(gate)
    batcher = Batcher(first, BatchPolicy(max_batch_size=1, max_queue_delay=0.0))
    batcher.add_instance(second)
    task = await run_batcher(batcher)
    # Keep the first busy so that the second gets a request, then retire the second.
    first.gate = threading.Event()
    a = asyncio.create_task(batcher.submit(row(1), 1))
    await asyncio.to_thread(first.started.wait, 5)
    b = asyncio.create_task(batcher.submit(row(2), 1))
    await asyncio.to_thread(second.started.wait, 5)
    assert batcher.remove_instance() is second
    assert batcher.instances == [first]
    assert batcher.remove_instance() is None  # never the last one
    c = asyncio.create_task(batcher.submit(row(3), 1))
    gate.set()
    first.gate.set()
    await asyncio.gather(a, b, c)
    assert len(second.batches) == 1  # retired: what it ran finished, nothing more came
    await stop(task)


def test_an_instance_must_compute_the_same_model() -> None:
    other = FakeModel()
    other.spec = type(other.spec)(other.spec.inputs, other.spec.outputs, 16, "test")
    batcher = Batcher(FakeModel(), BatchPolicy())
    with pytest.raises(ValueError, match="same spec"):
        batcher.add_instance(other)


def test_the_device_list_is_every_cuda_device_or_the_one_cpu() -> None:
    import torch

    from swarm.node._runtime import local_devices

    assert local_devices(torch.device("cpu"), lambda: 4) == [torch.device("cpu")]
    two = local_devices(torch.device("cuda"), lambda: 2)
    assert two == [torch.device("cuda"), torch.device("cuda", 1)]
    # A node told to use cuda:1 keeps it first; the others follow.
    assert local_devices(torch.device("cuda", 1), lambda: 3) == [
        torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 2)]
