"""Every scenario shipped in swarm/simnet/scenarios/ runs end to end and keeps its promises.

Small size for CI: the shipped node counts, the timeline compressed (the workload and
every fault happen in a fraction of the shipped seconds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from rich.console import Console

from swarm.simnet import RunOptions, Scenario, load_scenario, run_scenario
from swarm.simnet._scenario import builtin_scenarios

pytestmark = pytest.mark.slow

# Seconds of workload at most, per scenario, in CI.
_BUDGET = 12.0


def compressed(scenario: Scenario, duration: float) -> Scenario:
    """The same scenario with its timeline scaled to `duration` seconds of workload."""
    factor = min(1.0, duration / scenario.duration)
    faults = tuple(dataclasses.replace(
        f, at=f.at * factor, duration=None if f.duration is None else f.duration * factor)
        for f in scenario.faults)
    return dataclasses.replace(scenario, duration=scenario.duration * factor, faults=faults)


def test_every_shipped_scenario_is_covered() -> None:
    assert set(builtin_scenarios()) == {"default", "failover", "heterogeneous", "churn", "rollout",
                                        "autoscale", "cheater"}


# Autoscaling cannot be compressed (its delays and model loads take what they take): it
# runs below at its own, smaller size.
@pytest.mark.parametrize("name", sorted(set(builtin_scenarios()) - {"autoscale"}))
async def test_shipped_scenario_keeps_its_promises(name: str, tmp_path: Path) -> None:
    scenario = compressed(load_scenario(name), _BUDGET)
    with (tmp_path / "console.txt").open("w") as out:
        result = await run_scenario(
            scenario, RunOptions(report_dir=tmp_path / "report", live=False),
            console=Console(file=out, width=120))
    s = result.summary
    console = (tmp_path / "console.txt").read_text()
    assert s.kept, f"{name}: {s.promises}\n{console}"
    assert s.lost == 0, console
    assert s.errors == {}, console
    assert s.requests == s.ok > 0.5 * scenario.workload.rate * scenario.duration
    assert s.faults_applied == s.faults_total == len(scenario.faults)
    assert (tmp_path / "report" / "report.json").stat().st_size > 0
    if scenario.workload.chats:  # the default's chat traffic: CI's one run of it
        assert s.chat is not None, console
        assert s.chat.ok == s.chat.chats > 0, console
        assert s.chat.tokens > 0
        assert (tmp_path / "report" / "chat.png").stat().st_size > 0


async def test_autoscale_scenario_keeps_its_promises(tmp_path: Path) -> None:
    """The autoscale scenario at 4 nodes (node 0 and three that autoscale), its full
    timeline: replicas follow the step up, then go back to node 0's alone."""
    scenario = load_scenario("autoscale").with_overrides(nodes=4)
    with (tmp_path / "console.txt").open("w") as out:
        result = await run_scenario(
            scenario, RunOptions(report_dir=tmp_path / "report", live=False),
            console=Console(file=out, width=160))
    console = (tmp_path / "console.txt").read_text()
    assert result.summary.kept, f"{result.summary.promises}\n{console}"
    scaling = (tmp_path / "report" / "autoscale.json").read_text()
    assert '"loads": 0' not in scaling, console
