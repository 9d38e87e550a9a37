"""The node's autoscaling driver (swarm/node/_autoscaler.py) over a fake host and clock:
actions carried out, failed loads backed off and reported, the demand meter's arithmetic."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from swarm._clock import FakeClock
from swarm._errors import UnavailableError
from swarm._types import Digest, PeerId
from swarm.autoscale import ActionKind, AutoscaleConfig
from swarm.node._autoscaler import Autoscaler, DemandMeter
from swarm.node._models import BatchStat, ModelStats
from swarm.protocol import Advert, PeerView
from tests.autoscale.test_decide import HOT, advert, offer, swarm

CONFIG = AutoscaleConfig(enabled=True, interval=1, up_delay=2, panic_delay=1, down_delay=4, settle=0,
                         backoff_initial=10, backoff_max=40)


class FakeHost:
    def __init__(self, view: PeerView, *, fail: int = 0) -> None:
        self._view = view
        self.models: tuple = ()
        self.fail = fail
        self.loads: list[Digest] = []
        self.unloads: list[Digest] = []

    def view(self) -> PeerView:
        return self._view

    def counts(self) -> Callable[[PeerId], bool] | None:
        return None

    def own_advert(self) -> Advert | None:
        return advert(200, self.models)

    def memory_used(self) -> int:
        return 0

    async def load(self, digest: Digest, name: str) -> None:
        self.loads.append(digest)
        if self.fail:
            self.fail -= 1
            raise UnavailableError("no live peer stores it")
        self.models = (offer(digest, name, load=0.0),)

    async def unload(self, digest: Digest, name: str) -> None:
        self.unloads.append(digest)
        self.models = ()


async def steps(scaler: Autoscaler, clock: FakeClock, n: int) -> None:
    for _ in range(n):
        await scaler.step()
        clock.advance(1.0)


async def test_a_hot_model_is_loaded_and_then_released_when_quiet() -> None:
    clock = FakeClock()
    host = FakeHost(swarm([3.0], idle=0))
    scaler = Autoscaler(host, CONFIG, clock=clock, rng=random.Random(1))
    await steps(scaler, clock, 3)
    assert host.loads == [HOT]
    assert scaler.managed == {HOT}
    assert [(e.action, e.outcome) for e in scaler.events] == [
        (ActionKind.LOAD, "started"), (ActionKind.LOAD, "done")]
    assert "lottery" in scaler.events[-1].reason
    # Demand gone: two quiet replicas want one; one of the two ranks to release.
    host._view = swarm([0.0], idle=0)
    await steps(scaler, clock, 8)
    released = bool(host.unloads)
    assert released == (scaler.managed == set())


async def test_a_failed_load_backs_off_doubling_and_is_reported() -> None:
    clock = FakeClock()
    host = FakeHost(swarm([3.0], idle=0), fail=2)
    scaler = Autoscaler(host, CONFIG, clock=clock, rng=random.Random(1))
    await steps(scaler, clock, 3)
    assert len(host.loads) == 1
    failed = scaler.events[-1]
    assert failed.outcome == "failed"
    assert "not tried again for 10s" in failed.error
    await steps(scaler, clock, 8)  # t = 3..10: still in backoff (until 1 + 10)
    assert len(host.loads) == 1
    await steps(scaler, clock, 3)
    assert len(host.loads) == 2
    assert "for 20s" in scaler.events[-1].error  # doubled
    assert scaler.counters.by[("load", "failed")] == 2


def _served(digest: Digest) -> SimpleNamespace:
    return SimpleNamespace(digest=digest, stats=ModelStats(),
                           batcher=SimpleNamespace(queue_depth=0, instances=[None]))


def test_demand_meter_rates_over_a_window() -> None:
    clock = FakeClock()
    meter = DemandMeter(window=5.0, clock=clock)
    model = _served(HOT)
    assert meter.measure([model]) == {}  # first sample: no window yet
    clock.advance(5.0)
    stats = model.stats
    stats.inference_count = 40
    stats.queue.add(0.1, 40)  # 40 requests waited 0.1 s each
    stats.batches[8] = BatchStat()
    stats.batches[8].compute_infer.add(2.5)  # busy 2.5 s of 5
    model.batcher.queue_depth = 10
    m = meter.measure([model])[HOT]
    assert m.arrival_rate == pytest.approx(10.0)  # (40 executed + 10 queued) / 5 s
    assert m.queue_wait == pytest.approx(0.1)
    assert m.utilization == pytest.approx(0.5)
    clock.advance(1.0)
    assert meter.measure([model])[HOT] == m  # within the window: unchanged
    assert meter.measure([]) == {}  # a model no longer served is forgotten


def test_a_reloaded_version_starts_its_demand_from_scratch() -> None:
    # A rollback serves a digest again with fresh statistics. Differences against the
    # counters of the version before came out negative (a queue wait of -1 ms in an honest
    # advert, which every peer then refused as malformed: test_node_registry's rollout).
    clock = FakeClock()
    meter = DemandMeter(window=5.0, clock=clock)
    model = _served(HOT)
    model.stats.queue.add(0.5, 10)  # 10 requests waited 5 s in all before the reload
    meter.measure([model])
    reloaded = _served(HOT)
    clock.advance(5.0)
    reloaded.stats.queue.add(0.001, 30)  # 30 requests since, 30 ms in all
    assert meter.measure([reloaded]) == {}  # the first sample of the new statistics
    clock.advance(5.0)
    reloaded.stats.queue.add(0.002, 10)
    m = meter.measure([reloaded])[HOT]
    assert m.queue_wait == pytest.approx(0.002)
    assert m.arrival_rate >= 0


def test_demand_meter_utilization_is_per_instance() -> None:
    clock = FakeClock()
    meter = DemandMeter(window=5.0, clock=clock)
    model = _served(HOT)
    model.batcher.instances = [None, None]  # two local replicas share the queue
    meter.measure([model])
    clock.advance(5.0)
    model.stats.batches[8] = BatchStat()
    model.stats.batches[8].compute_infer.add(5.0)  # one instance's worth of busy time
    assert meter.measure([model])[HOT].utilization == pytest.approx(0.5)


def test_config_table_and_flags(tmp_path: object) -> None:
    from pathlib import Path

    from swarm._errors import ConfigError
    from swarm.node._cli import _config, _parser
    from swarm.node._config import load_config

    path = Path(str(tmp_path)) / "node.toml"
    path.write_text('[autoscale]\nenabled = true\nallowed = ["acme/"]\nmax-models = 2\n')
    config = load_config(path, env={})
    assert config.autoscale == dataclasses.replace(AutoscaleConfig(), enabled=True,
                                                   allowed=("acme/",), max_models=2)
    path.write_text("[autoscale]\nup_delay = 600\ndown_delay = 60\n")
    with pytest.raises(ConfigError, match="down_delay"):
        load_config(path, env={})
    path.write_text("[autoscale]\ntypo = 1\n")
    with pytest.raises(ConfigError, match="typo"):
        load_config(path, env={})
    args = _parser().parse_args(["run", "--autoscale", "--autoscale-allow", "acme/chat",
                                 "--autoscale-memory-budget", "1000"])
    scale = _config(args).autoscale
    assert (scale.enabled, scale.allowed, scale.memory_budget) == (True, ("acme/chat",), 1000)
    assert not _config(_parser().parse_args(["run"])).autoscale.enabled
