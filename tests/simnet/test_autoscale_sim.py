"""Autoscaling in simnet: the steps shape, the [autoscale] table, the promises' arithmetic,
and a small virtual-time swarm whose providers run the node's driver and decide()."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from swarm._errors import ConfigError
from swarm.simnet import run_virtual_swarm
from swarm.simnet._autoscale import ReplicaSample, ScalingRecord, summarize_autoscale
from swarm.simnet._scenario import Shape, load_scenario, parse_scenario, plan_requests, rate_at
from swarm.simnet._workload import RequestRecord

BENCH = Path(__file__).resolve().parents[2] / "bench" / "autoscale-virtual.toml"

SCENARIO = """
name = "t"
duration = 30
[[nodes.group]]
count = 1
models = ["builtin/mlp"]
[[nodes.group]]
count = 2
models = []
autoscale = true
[autoscale]
up_delay = 2
down_delay = 5
[workload]
shape = "steps"
rate = 1
steps = [{at = 0, rate = 1}, {at = 10, rate = 40}, {at = 20, rate = 0}]
[[workload.model]]
name = "builtin/mlp"
[promises]
scale_up_replicas = 2
scale_up_within_s = 10
max_loads = 2
released_to = 1
"""


def test_steps_shape_and_autoscale_table_parse() -> None:
    s = parse_scenario(SCENARIO)
    assert s.workload.shape is Shape.STEPS
    assert [rate_at(s.workload, t, 30) for t in (0, 9.9, 10, 19, 25)] == [1, 1, 40, 40, 0]
    assert dict(s.autoscale) == {"up_delay": 2, "down_delay": 5}
    assert [spec.autoscale for spec in s.node_specs()] == [False, True, True]
    plan = plan_requests(s.workload, 30, random.Random(1))
    assert 300 < len(plan) < 520  # ~10 + 400 requests
    assert all(p.at < 20 for p in plan)


@pytest.mark.parametrize(("change", "error"), [
    (("up_delay = 2", "up_delay = 60"), "down_delay"),          # AutoscaleConfig's own check
    (("down_delay = 5", "typo = 5"), "typo"),
    (("{at = 10, rate = 40}, ", ""), None),                     # still valid
    (("steps = [{at = 0", "steps = [{at = 40"), "within the run"),
    (('shape = "steps"', 'shape = "poisson"'), "only to shape"),
    (("autoscale = true", "autoscale = false"), "models must name"),
])
def test_bad_autoscale_scenarios_say_why(change: tuple[str, str], error: str | None) -> None:
    text = SCENARIO.replace(*change)
    if error is None:
        parse_scenario(text)
        return
    with pytest.raises(ConfigError, match=error):
        parse_scenario(text)


def test_promises_need_an_autoscaling_group() -> None:
    text = SCENARIO.replace("autoscale = true", 'models = ["builtin/mlp"]').replace(
        "models = []\n", "")
    with pytest.raises(ConfigError, match="autoscale = true"):
        parse_scenario(text)


def _record(i: int, at: float, latency: float) -> RequestRecord:
    return RequestRecord(i, "m", 1, at, at, latency, "ok")


def test_summary_times_the_scale_up_and_splits_p99_by_phase() -> None:
    s = parse_scenario(SCENARIO)
    samples = [ReplicaSample(t, r) for t, r in [(0, 1), (10, 1), (14, 2), (22, 2), (28, 1)]]
    events = [ScalingRecord(13, 1, "load", "done", "hot"),
              ScalingRecord(26, 1, "unload", "done", "quiet"),
              ScalingRecord(12, 2, "load", "failed", "hot", "no holder")]
    records = [_record(0, 1, 0.1), _record(1, 11, 3.0), _record(2, 16, 0.2)]
    summary = summarize_autoscale("m", s.workload, 30, s.promises, samples, events, records)
    assert (summary.rise_at, summary.fall_at, summary.enough_at) == (10, 20, 14)
    assert summary.time_to_enough == 4
    assert (summary.loads, summary.unloads, summary.failed) == (1, 1, 1)
    assert summary.p99_before_ms == pytest.approx(100)
    assert summary.p99_scaling_ms == pytest.approx(3000)
    assert summary.p99_after_ms == pytest.approx(200)
    assert summary.final_replicas == 1
    assert summary.replica_seconds == 10 + 4 + 8 * 2 + 6 * 2


def test_virtual_swarm_scales_up_and_back_with_the_production_driver() -> None:
    """The bench scenario at 12 providers, quiet from 240 s to 700 s: replicas follow
    demand, then return to the one that serves it by configuration."""
    scenario = load_scenario(BENCH)
    groups = (scenario.groups[0], dataclasses.replace(scenario.groups[1], count=11))
    workload = dataclasses.replace(scenario.workload, steps=tuple(
        dataclasses.replace(step, at=min(step.at, 240)) for step in scenario.workload.steps))
    small = dataclasses.replace(scenario, groups=groups, node_count=12, duration=700,
                                workload=workload)
    result = run_virtual_swarm(small)
    scaling = result.autoscale
    assert scaling is not None
    assert scaling.max_replicas >= 4
    assert scaling.time_to_enough is not None
    assert scaling.time_to_enough < 240
    assert scaling.final_replicas == 1
    assert scaling.loads == scaling.unloads
    assert all("lottery" in e.reason for e in scaling.events if e.action == "load")
