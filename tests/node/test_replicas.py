"""Local replicas: several instances of one model (one per device) share its queue.

No GPU here: two CPU instances stand for two devices.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

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


# --------------------------------------------------------------- the load a Batcher measures


async def test_load_sample_counts_waits_busy_time_and_instance_seconds() -> None:
    from swarm._clock import FakeClock
    from swarm.node._replicas import measure

    clock = FakeClock()
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = Batcher(model, BatchPolicy(max_batch_size=1, max_queue_delay=0.0), clock=clock)
    task = await run_batcher(batcher)
    first = batcher.load_sample()
    a = asyncio.create_task(batcher.submit(row(1), 1))
    await asyncio.to_thread(model.started.wait, 5)  # executing since t = 0
    b = asyncio.create_task(batcher.submit(row(2), 1))
    await wait_until(lambda: batcher.queue_depth == 1, what="the second request queued")
    clock.advance(2.0)  # b waits 2 s; the instance is busy all along
    middle = batcher.load_sample()
    assert (middle.queued, middle.oldest_wait) == (1, 2.0)
    load = measure(first, middle, instances=1, devices=2)
    assert load.utilization == pytest.approx(1.0)
    assert load.queue_wait == pytest.approx(2.0)  # the one queued has waited longest
    gate.set()
    await asyncio.gather(a, b)
    last = batcher.load_sample()
    assert last.started - first.started == 2
    assert last.waited - first.waited == pytest.approx(2.0)  # a: 0 s, b: 2 s
    assert measure(first, last, instances=1, devices=2).queue_wait == pytest.approx(1.0)
    # A second instance doubles the instance-seconds: half as busy over the next 2 s.
    batcher.add_instance(FakeModel())
    clock.advance(2.0)
    assert batcher.load_sample().capacity - last.capacity == pytest.approx(4.0)
    await stop(task)


# --------------------------------------------------------------- the driver (fake host and clock)


class ScriptedBatcher:
    """A batcher whose load is set by the test: `hot` (every instance busy, requests wait
    0.5 s) or cold (idle)."""

    def __init__(self, clock: Any) -> None:
        from types import SimpleNamespace

        self._clock = clock
        self.instances: list[object] = [SimpleNamespace(device="cpu")]
        self.hot = True
        self.dropped: list[object] = []
        self._counts = [0.0, 0.0, 0.0, 0.0]  # started, waited, busy, capacity
        self._at: float = clock.monotonic()

    def load_sample(self) -> Any:
        from swarm.node._batching import LoadSample

        now = self._clock.monotonic()
        dt, n = now - self._at, len(self.instances)
        self._at = now
        started, waited, busy, capacity = self._counts
        if self.hot:
            started, waited, busy = started + 10 * dt, waited + 5 * dt, busy + n * dt
        self._counts = [started, waited, busy, capacity + n * dt]
        return LoadSample(now, int(started), waited, busy, capacity + n * dt, 0, 0.0)

    def add_instance(self, model: object) -> None:
        self.instances.append(model)

    def remove_instance(self) -> object:
        if len(self.instances) <= 1:
            return None
        model = self.instances.pop()
        self.dropped.append(model)
        return model

    async def wait_dropped(self, model: object) -> None:
        assert model in self.dropped


class FakeReplicaHost:
    def __init__(self, served: Any, *, fail: int = 0) -> None:
        self.served = served
        self.fail = fail
        self.loads: list[str] = []
        self.released: list[object] = []
        self.digest = served.digest

    def models(self) -> list[Any]:
        return [self.served]

    def serving(self, served: object) -> bool:
        return True

    async def load_instance(self, served: Any, device: str) -> Any:
        from types import SimpleNamespace

        self.loads.append(device)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("CUDA out of memory (fake)")
        return SimpleNamespace(device=device, digest=self.digest)

    async def release(self, model: object) -> None:
        self.released.append(model)


def _driver(devices: tuple[str, ...], fail: int = 0) -> tuple[Any, FakeReplicaHost, Any]:
    from types import SimpleNamespace

    from swarm._clock import FakeClock
    from swarm._types import Digest
    from swarm.autoscale import LocalConfig
    from swarm.node._replicas import Replicas

    clock = FakeClock()
    served = SimpleNamespace(digest=Digest.of(b"m"), name="acme/m", batcher=ScriptedBatcher(clock))
    host = FakeReplicaHost(served, fail=fail)
    config = LocalConfig(interval=1, target_queue_wait=0.05, busy_utilization=0.8, up_delay=2,
                         down_delay=4, backoff_initial=10, backoff_max=40)
    return Replicas(host, devices, config, clock=clock), host, clock


async def _steps(replicas: Any, clock: Any, n: int) -> None:
    for _ in range(n):
        clock.advance(1.0)
        await replicas.step()


async def test_driver_adds_an_instance_on_the_free_device_and_releases_it_when_quiet() -> None:
    replicas, host, clock = _driver(("cuda:0", "cuda:1"))
    batcher = host.served.batcher
    batcher.instances[0].device = "cuda"  # the first instance: "cuda" is cuda:0
    await _steps(replicas, clock, 4)  # a first sample; hot from t=2; up_delay 2 s
    assert host.loads == ["cuda:1"]
    assert len(batcher.instances) == 2
    events = [(e.action, e.outcome, e.device) for e in replicas.events]
    assert events == [("add_instance", "started", "cuda:1"), ("add_instance", "done", "cuda:1")]
    assert "queue wait 0.5 s > 0.05 s" in replicas.events[-1].reason
    await _steps(replicas, clock, 5)  # every device holds one: nothing more
    assert host.loads == ["cuda:1"]
    assert "no free device" not in replicas.latest[host.served.digest]
    batcher.hot = False
    await _steps(replicas, clock, 6)  # cold; down_delay 4 s
    assert len(batcher.instances) == 1
    assert [m.device for m in host.released] == ["cuda:1"]
    assert [(e.action, e.outcome) for e in replicas.events][-2:] == [
        ("remove_instance", "started"), ("remove_instance", "done")]
    assert replicas.counters.by == {("add_instance", "started"): 1, ("add_instance", "done"): 1,
                                    ("remove_instance", "started"): 1,
                                    ("remove_instance", "done"): 1}
    await _steps(replicas, clock, 10)  # never below one
    assert len(batcher.instances) == 1


async def test_driver_refuses_an_instance_of_another_version() -> None:
    from swarm._types import Digest

    replicas, host, clock = _driver(("cpu", "cpu"))
    host.digest = Digest.of(b"the .pt2 file changed since")
    await _steps(replicas, clock, 4)
    assert len(host.served.batcher.instances) == 1
    assert len(host.released) == 1
    assert "not " + replicas.events[0].digest.short in replicas.events[-1].error


async def test_driver_backs_off_a_failed_instance_load_doubling_and_reports_it() -> None:
    replicas, host, clock = _driver(("cpu", "cpu"), fail=2)
    batcher = host.served.batcher
    await _steps(replicas, clock, 4)
    assert host.loads == ["cpu"]  # the second "cpu": a device named twice holds two
    failed = replicas.events[-1]
    assert (failed.action, failed.outcome) == ("add_instance", "failed")
    assert "RuntimeError: CUDA out of memory (fake)" in failed.error
    assert "not tried again for 10s" in failed.error
    await _steps(replicas, clock, 9)  # t = 5..13: in backoff (until 4 + 10)
    assert host.loads == ["cpu"]
    assert "a load failed" in replicas.latest[host.served.digest]
    await _steps(replicas, clock, 3)
    assert len(host.loads) == 2
    assert "for 20s" in replicas.events[-1].error
    await _steps(replicas, clock, 25)
    assert len(host.loads) == 3
    assert len(batcher.instances) == 2  # the third try loaded it
    assert replicas.counters.by[("add_instance", "failed")] == 2


# --------------------------------------------------------------- configuration


@pytest.mark.parametrize(("devices", "device", "message"), [
    ("tpu:0", "auto", "unknown device 'tpu:0'"),
    ("cuda:0,cuda:x", "auto", "unknown device 'cuda:x'"),
    ("cuda:123456", "auto", "unknown device"),
    ("cuda:1,cuda:1", "auto", "cuda:1 is named twice"),
    ("cuda,cuda:0", "auto", "cuda:0 is named twice"),
    ("cpu,cuda:0", "auto", "all CPU or all CUDA"),
    ("cpu," * 65, "auto", "at most 64"),
    ("cuda:1,cuda:0", "cuda:0", "must be the first of devices"),
    ("cpu, ,cpu", "auto", "unknown device ''"),
    ("", "auto", None),  # none named: the default
])
def test_bad_devices_get_a_clear_config_error(devices: str, device: str,
                                              message: str | None) -> None:
    from swarm._errors import ConfigError
    from swarm.node._config import load_config

    flags = {"devices": devices, "device": device}
    if message is None:
        assert load_config(env={}, flags=flags).devices == ()
        return
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, flags=flags)


def test_replicas_table_flags_and_a_missing_cuda_device(tmp_path: object) -> None:
    from pathlib import Path

    from swarm._errors import ConfigError
    from swarm.autoscale import LocalConfig
    from swarm.node import Node, NodeConfig
    from swarm.node._cli import _config, _parser
    from swarm.node._config import load_config

    path = Path(str(tmp_path)) / "node.toml"
    path.write_text('devices = ["cpu", "cpu"]\n[replicas]\nup-delay = 1\nmode = "off"\n')
    config = load_config(path, env={})
    assert config.devices == ("cpu", "cpu")
    assert config.replicas == LocalConfig(up_delay=1, mode="off")
    for bad, message in (('[replicas]\nmode = "sometimes"\n', "'auto' or 'off'"),
                         ("[replicas]\ntypo = 1\n", "typo"),
                         ("[replicas]\ninterval = 0\n", "interval"),
                         ("[replicas]\nbackoff_initial = 10\nbackoff_max = 1\n", "backoff")):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_config(path, env={})
    args = _parser().parse_args(["run", "--replicas", "off", "--devices", "cpu,cpu"])
    config = _config(args)
    assert (config.replicas.mode, config.devices) == ("off", ("cpu", "cpu"))
    assert _config(_parser().parse_args(["run"])).replicas.mode == "auto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--replicas", "always"])
    # A CPU-only machine has no cuda:0 (nor a CUDA node one it does not have).
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            Node(NodeConfig.local(Path(str(tmp_path)), devices=("cuda:0", "cuda:1")))
    # CPU only, no devices named: one device, nothing changes (no driver runs).
    assert Node(NodeConfig.local(Path(str(tmp_path)), device="cpu")).devices == ["cpu"]


# --------------------------------------------------------------- a real node on loopback


async def test_a_node_with_two_cpu_devices_adds_an_instance_under_load_and_releases_it(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """builtin/mlp on devices cpu,cpu: the first instance load fails (reported, retried
    after a backoff), the second try adds it, both instances execute batches, and once the
    load falls to a trickle the node goes back to one instance; no request fails."""
    from pathlib import Path

    from swarm._errors import SwarmError
    from swarm.autoscale import LocalConfig
    from swarm.client import AsyncClient
    from swarm.node import Node, NodeConfig
    from swarm.node._cli import main

    # Hot: requests wait over 0.5 ms on an instance busy 80% of the time; short delays.
    rule = LocalConfig(interval=0.2, target_queue_wait=0.0005, busy_utilization=0.8,
                       up_delay=0.3, down_delay=0.6, backoff_initial=0.3, backoff_max=1.0)
    config = NodeConfig.local(Path(str(tmp_path)), serve=("builtin/mlp",), device="cpu",
                              devices=("cpu", "cpu"), replicas=rule)
    async with Node(config) as node:
        served = node.table.resolve("builtin/mlp")
        batcher = served.batcher
        real, tries = node.sources[served.digest], []

        def flaky(device: str) -> object:
            tries.append(device)
            if len(tries) == 1:
                raise RuntimeError("out of memory (test)")
            return real(device)

        node.sources[served.digest] = flaky
        failures: list[BaseException] = []
        answered = 0
        phase = {"clients": 8}

        async def client_loop(client: AsyncClient, index: int) -> None:
            nonlocal answered
            x = np.ones((16, 512), np.float32)
            for _ in range(20_000):  # bounded; the test ends it by phase
                if index >= phase["clients"]:
                    return
                try:
                    out = await client.infer_raw("builtin/mlp", x if index else x[:1])
                    assert next(iter(out.values())).shape[0] in (1, 16)
                    answered += 1
                except SwarmError as exc:
                    failures.append(exc)

        async with AsyncClient(node.grpc_address) as client:
            tasks = [asyncio.create_task(client_loop(client, i)) for i in range(8)]
            await wait_until(lambda: len(batcher.instances) == 2, timeout=30,
                             what=lambda: f"a second instance ({list(node.replicas.events)})")
            await wait_until(lambda: min(batcher.batches_per_instance) >= 3, timeout=20,
                             what="both instances executing batches")
            assert [m.device.type for m in batcher.instances] == ["cpu", "cpu"]
            assert batcher.items_per_second == pytest.approx(
                batcher._items_per_second.value * 2)  # the advert's rate sums the instances
            status = node.status()
            assert [(e.action, e.outcome) for e in status.replica_scaling] == [
                ("add_instance", "started"), ("add_instance", "failed"),
                ("add_instance", "started"), ("add_instance", "done")]
            assert "RuntimeError: out of memory (test)" in status.replica_scaling[1].error
            assert "queue wait" in status.replica_scaling[0].reason
            assert list(status.models[0].instance_devices) == ["cpu", "cpu"]
            metrics = node.metrics.render().decode()
            assert 'swarm_model_instances{model="builtin/mlp"} 2.0' in metrics
            assert 'swarm_replica_actions_total{action="add_instance",outcome="failed"} 1.0' \
                in metrics
            # Load falls to one sequential client: one instance will do.
            phase["clients"] = 1
            await wait_until(lambda: len(batcher.instances) == 1, timeout=30,
                             what=lambda: f"back to one instance ({node.replicas.latest})")
            assert tries == ["cpu", "cpu"]
            phase["clients"] = 0
            await asyncio.gather(*tasks)
        assert not failures
        assert answered > 0
        events = [(e.action, e.outcome) for e in node.status().replica_scaling]
        assert events[-2:] == [("remove_instance", "started"), ("remove_instance", "done")]
        assert len(node._owned) == 1  # the retired instance was closed and let go
        # swarm-node status shows instances and decisions.
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "--address", node.grpc_address]) == 0
        out = capsys.readouterr().out
        assert "1 instance(s) on cpu" in out
        assert "replicas   auto, devices cpu, cpu" in out
        assert "add_instance builtin/mlp" in out
        assert "remove_instance" in out
