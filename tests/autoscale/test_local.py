"""decide_local: instances of one model on this node's devices, from its own queue."""

from __future__ import annotations

import pytest

from swarm._errors import ConfigError
from swarm.autoscale import LocalConfig, LocalLoad, LocalTrend, decide_local

CONFIG = LocalConfig(target_queue_wait=0.05, busy_utilization=0.8, up_delay=10, down_delay=60)


def run(loads: list[LocalLoad], config: LocalConfig = CONFIG) -> list[int]:
    trend, steps = LocalTrend(), []
    for load in loads:
        decision = decide_local(load, trend, config)
        trend = decision.trend
        steps.append(decision.step)
    return steps


def hot(t: float, instances: int = 1, devices: int = 2) -> LocalLoad:
    return LocalLoad(now=t, instances=instances, devices=devices, queue_wait=0.4, utilization=0.95)


def test_a_long_queue_on_busy_instances_adds_one_after_the_delay() -> None:
    steps = run([hot(t) for t in range(0, 12)])
    assert steps == [0] * 10 + [1, 0]  # at 10 s; then the delay starts afresh


def test_a_blip_restarts_the_delay() -> None:
    calm = LocalLoad(now=5, instances=1, devices=2, queue_wait=0.0, utilization=0.5)
    steps = run([hot(0), hot(4), calm, hot(6), hot(15), hot(16)])
    assert steps == [0, 0, 0, 0, 0, 1]


def test_never_more_instances_than_devices_nor_for_a_wait_with_idle_instances() -> None:
    assert set(run([hot(t, instances=2, devices=2) for t in range(0, 30)])) == {0}
    batching = [LocalLoad(now=t, instances=1, devices=4, queue_wait=0.4, utilization=0.3)
                for t in range(0, 30)]
    assert set(run(batching)) == {0}


def test_idle_instances_go_after_the_longer_cool_down_never_the_last() -> None:
    cold = [LocalLoad(now=t, instances=2, devices=2, queue_wait=0.0, utilization=0.3)
            for t in range(0, 62)]
    assert run(cold) == [0] * 60 + [-1, 0]
    alone = [LocalLoad(now=t, instances=1, devices=2, queue_wait=0.0, utilization=0.0)
             for t in range(0, 100)]
    assert set(run(alone)) == {0}
    # Two at 45% would be one at 90%: busy, so both stay.
    busy_pair = [LocalLoad(now=t, instances=2, devices=2, queue_wait=0.0, utilization=0.45)
                 for t in range(0, 100)]
    assert set(run(busy_pair)) == {0}


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        LocalConfig(busy_utilization=0)
    with pytest.raises(ConfigError):
        LocalConfig(up_delay=-1)
