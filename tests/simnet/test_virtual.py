"""`swarm simnet virtual`: a whole swarm in virtual time, at small scale (seconds of wall time)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from swarm.cli import main as swarm_main
from swarm.node import BatchPolicy, Dispatch, QueueView, Wait
from swarm.scheduler import Observations
from swarm.simnet._scenario import Scenario, parse_scenario
from swarm.simnet._virtual import VirtualResult, default_virtual_scenario, run_virtual_swarm
from swarm.simnet._virtual_stats import gini, load_spread

# 50 providers in two groups, 5 clients; adverts every 5 s so that views follow faults
# within the test's minute (TTL 12.5 s).
BASE = """
name = "small"
description = "50 providers, 5 clients"
duration = 60
seed = 3
[nodes]
advert_interval = 5
[[nodes.group]]
count = 25
models = ["org/chat"]
price_per_request = {cheap}
[[nodes.group]]
count = 25
models = ["org/chat"]
price_per_request = {dear}
slowdown = {slowdown}
[workload]
rate = 5
timeout = 30
[[workload.model]]
name = "org/chat"
inputs = "text"
[virtual]
clients = 5
speed_spread = {spread}
{virtual}
{faults}
"""


def scenario(*, cheap: int = 10, dear: int = 10, slowdown: float = 1, spread: float = 4,
             virtual: str = "", faults: str = "") -> Scenario:
    return parse_scenario(BASE.format(cheap=cheap, dear=dear, slowdown=slowdown, spread=spread,
                                      virtual=virtual, faults=textwrap.dedent(faults)),
                          source="test.toml")


def served_by_group(result: VirtualResult) -> Counter[int]:
    group = {p["index"]: p["group"] for p in result.providers}
    return Counter(group[r.node] for r in result.records if r.ok and r.node is not None)


def test_a_small_swarm_serves_everything_and_its_views_converge() -> None:
    result = run_virtual_swarm(scenario())
    s, st = result.summary, result.stats
    assert s.requests > 250  # ~5/s for 60 s
    assert (s.ok, s.lost, dict(s.errors)) == (s.requests, 0, {})
    assert s.kept
    assert st.convergence_s is not None
    assert st.convergence_s < 1.0
    assert st.min_view_completeness == 1.0
    assert st.max_stale_entries == 0
    assert st.adverts >= 50 * 12  # one at start, then every 4-6 s for ~65 s
    # Providers only publish (fanout); clients relay among themselves.
    assert 0 < st.provider_msgs_per_s < st.client_msgs_per_s
    assert st.virtual_s > 70  # warm-up, workload, drain
    assert st.events > 10_000
    assert st.wall_s < 20


def test_same_seed_same_run_and_another_seed_another() -> None:
    small = dataclasses.replace(scenario(), duration=20)
    first, again = run_virtual_swarm(small), run_virtual_swarm(small)
    assert first.records == again.records
    assert first.summary == again.summary
    assert first.providers == again.providers
    assert first.views == again.views
    other = run_virtual_swarm(dataclasses.replace(small, seed=4))
    assert other.records != first.records


_RUN = """
import hashlib, sys
from swarm.simnet._virtual import default_virtual_scenario, run_virtual_swarm
r = run_virtual_swarm(default_virtual_scenario(30, duration=15, seed=7))
print(hashlib.sha256(repr(r.records).encode()).hexdigest(), r.stats.adverts)
"""


def test_same_seed_same_run_in_processes_with_different_hash_seeds() -> None:
    # PeerId hashes change per process: nothing may depend on the order of a set of them.
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True,
                              text=True, timeout=120, check=True)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]


def test_a_crash_loses_no_request_that_had_time_to_retry() -> None:
    result = run_virtual_swarm(scenario(faults="""
        [[fault]]
        at = 20
        kind = "kill"
        fraction = 0.2
        """))
    s = result.summary
    assert [f.outcome for f in result.faults] == ["applied"]
    assert s.lost == 0
    assert s.ok == s.requests
    assert any(r.attempts > 1 for r in result.records)  # reset connections were retried
    killed = [p for p in result.providers if p["served"] == 0]
    assert len(killed) <= 10
    # The dead providers' adverts expired from every view (TTL 12.5 s).
    _, completeness, stale = result.views[-1]
    assert stale == 0
    assert completeness == 1.0
    assert max(v[2] for v in result.views if 20 <= v[0] <= 25) == 10


def test_leaving_and_rejoining_providers_lose_nothing() -> None:
    result = run_virtual_swarm(scenario(faults="""
        [[fault]]
        at = 10
        kind = "leave"
        fraction = 0.3
        [[fault]]
        at = 30
        kind = "rejoin"
        fraction = 0.3
        """))
    assert [f.outcome for f in result.faults] == ["applied", "applied"]
    assert result.summary.lost == 0
    late = {r.node for r in result.records if r.ok and r.scheduled > 40}
    left_then_back = {r.node for r in result.records if r.ok and 15 < r.scheduled < 28}
    assert len(late - left_then_back) > 0  # rejoined providers serve again
    assert result.views[-1][1] == 1.0


def test_slow_providers_get_less_traffic() -> None:
    result = run_virtual_swarm(scenario(slowdown=4, spread=1))
    fast, slow = served_by_group(result)[0], served_by_group(result)[1]
    assert result.summary.lost == 0
    assert slow < 0.25 * (fast + slow)
    assert result.stats.load.slowest_quarter < result.stats.load.fastest_quarter


def test_price_caps_are_respected() -> None:
    result = run_virtual_swarm(scenario(cheap=5, dear=50, virtual="max_price = 10"))
    s = result.summary
    assert s.lost == 0
    assert served_by_group(result)[1] == 0
    assert all(r.price == 5 for r in result.records if r.ok)
    assert s.mean_price == 5


def test_a_price_cap_nobody_meets_loses_every_request_as_no_provider() -> None:
    result = run_virtual_swarm(dataclasses.replace(
        scenario(cheap=50, dear=50, virtual="max_price = 10"), duration=5))
    assert result.summary.ok == 0
    assert set(result.summary.errors) == {"NO_PROVIDER"}
    assert not result.summary.kept


def test_load_spread_numbers() -> None:
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([]) == 0.0
    spread = load_spread([10, 0, 5, 5], [1.0, 4.0, 2.0, 3.0])
    assert (spread.used, spread.max_over_mean) == (3, 2.0)
    assert (spread.fastest_quarter, spread.slowest_quarter) == (0.5, 0.0)


def test_cli_prints_a_summary_and_writes_the_report(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = swarm_main(["simnet", "virtual", "--nodes", "20", "--clients", "3", "--duration", "10",
                       "--seed", "2", "--report", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "PASS" in out
    assert "load spread" in out
    assert "events/wall s" in out
    assert "hedges" in out
    assert "items per batch" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["kept"] is True
    assert report["virtual"]["providers"] == 20
    assert report["virtual"]["clients"] == 3
    assert report["virtual"]["hedges"] >= 0
    assert sum(report["virtual"]["batch_sizes"].values()) > 0
    assert len(report["requests"]) == report["summary"]["requests"] > 0
    assert len(report["providers"]) == 20
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "summary.md", "latency.png",
                                                   "load.png"}


def test_cli_rejects_bad_settings_and_up_rejects_fractions(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    with pytest.raises(SystemExit) as exited:
        swarm_main(["simnet", "virtual", "--nodes", "5", "--clients", "0"])
    assert exited.value.code == 2
    assert "--clients: must be at least 1" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.format(cheap=1, dear=1, slowdown=1, spread=0.5, virtual="", faults=""))
    assert swarm_main(["simnet", "virtual", "--scenario", str(bad)]) == 2
    assert "virtual.speed_spread must be >= 1" in capsys.readouterr().err
    frac = tmp_path / "frac.toml"
    frac.write_text(BASE.format(cheap=1, dear=1, slowdown=1, spread=1, virtual="",
                                faults="[[fault]]\nat = 1\nkind = \"kill\"\nfraction = 0.5\n"))
    assert swarm_main(["simnet", "up", "--scenario", str(frac)]) == 2
    assert "fraction" in capsys.readouterr().err


@pytest.mark.slow
def test_a_medium_swarm_in_virtual_time() -> None:
    result = run_virtual_swarm(default_virtual_scenario(300, duration=120, seed=1))
    st = result.stats
    assert result.summary.lost == 0
    assert st.providers == 300
    assert st.clients == 50
    assert st.convergence_s is not None
    assert st.load.used > 200  # most providers get some work; the fast ones most
    assert st.load.slowest_quarter < st.load.fastest_quarter


# ---------------------------------------------------------------- production code inside


def test_the_scenarios_hedge_setting_reaches_the_production_router() -> None:
    hedging = run_virtual_swarm(scenario())
    plain = run_virtual_swarm(scenario(virtual="hedge = false"))
    assert hedging.stats.hedges > 0
    assert plain.stats.hedges == 0
    assert hedging.records != plain.records
    # A hedge is a second attempt of the same request.
    assert sum(r.attempts for r in hedging.records) >= hedging.summary.requests + 1


def test_a_change_to_the_production_router_changes_the_simulation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The Router hedges by the client's overall p95 while it has too few samples of a
    # provider (the usual case with many providers); without that it hedges less.
    before = run_virtual_swarm(scenario())
    monkeypatch.setattr(Observations, "overall_p95", lambda self: None)
    after = run_virtual_swarm(scenario())
    assert after.stats.hedges < before.stats.hedges


# Four equal providers of a fast model; two bursts at 40x the base rate.
BURSTY = """
name = "bursty"
duration = 20
seed = 5
[nodes]
advert_interval = 5
[[nodes.group]]
count = 4
models = ["org/embed"]
[workload]
shape = "burst"
rate = 5
burst_rate = 200
bursts = [{{at = 5, length = 3}}, {{at = 12, length = 3}}]
timeout = 30
[[workload.model]]
name = "org/embed"
inputs = "vector"
[virtual]
clients = 2
base_ms = 40
per_item_ms = 5
speed_spread = 1
max_queue = 1024
{virtual}
"""


def bursty(virtual: str) -> VirtualResult:
    return run_virtual_swarm(parse_scenario(BURSTY.format(virtual=virtual), source="b.toml"))


def test_providers_batch_by_the_nodes_policy() -> None:
    eager = bursty("max_queue_delay_ms = 0")
    patient = bursty("max_queue_delay_ms = 50")
    alone = bursty("batching = false")
    for result in (eager, patient, alone):
        assert result.summary.lost == 0
    # Requests that queue while a batch executes go together, at most max_batch items.
    assert max(eager.stats.batch_sizes) == 8
    # Waiting up to 50 ms for a fuller batch (while arrivals outpace execution): fewer,
    # larger batches.
    assert sum(patient.stats.batch_sizes.values()) < sum(eager.stats.batch_sizes.values())
    assert patient.stats.mean_batch > eager.stats.mean_batch
    # BatchPolicy(enabled=False): decide() dispatches one request at a time.
    assert set(alone.stats.batch_sizes) == {1}
    assert alone.summary.latency.p50 > eager.summary.latency.p50


def test_batch_sizes_follow_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever decide() answers is what the simulated providers do.
    import swarm.simnet._virtual_provider as provider

    def one_at_a_time(policy: BatchPolicy, view: QueueView) -> Dispatch | Wait:
        return Wait(None) if not view.sizes or view.busy else Dispatch(1)

    monkeypatch.setattr(provider, "decide", one_at_a_time)
    assert set(bursty("").stats.batch_sizes) == {1}


@pytest.mark.parametrize("share", ["0", "1"])
def test_cli_explore_sets_the_share_of_first_attempts_that_explore(
        tmp_path: Path, share: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = swarm_main(["simnet", "virtual", "--nodes", "20", "--clients", "3", "--duration", "10",
                       "--seed", "2", "--report", str(tmp_path), "--quiet", "--explore", share])
    assert code == 0
    assert "explorations" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenario"]["virtual"]["explore"] == float(share)
    explored = report["virtual"]["explorations"]
    assert explored == 0 if share == "0" else explored > 0


def test_cli_explore_outside_0_1_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        swarm_main(["simnet", "virtual", "--explore", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err


def test_virtual_providers_refuse_past_their_admission_bound(tmp_path: Path) -> None:
    """Overloaded (10 providers, 40 requests/s): the providers run the node's admits() and
    refuse; the Routers' refusals are no lost requests by themselves."""
    swarm_main(["simnet", "virtual", "--nodes", "10", "--clients", "3", "--duration", "4",
                "--rate", "40", "--seed", "2", "--report", str(tmp_path), "--quiet"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenario"]["virtual"]["admission_wait"] == 0.05  # the node's default
    assert report["virtual"]["refusals"] > 0
    assert "RESOURCE_EXHAUSTED" not in report["summary"]["errors"]
