"""Summary numbers, promise checks and the report folder, from hand-made request records."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from swarm.simnet._report import (
    FaultEvent,
    LiveView,
    NodeRow,
    evaluate_promises,
    latency_stats,
    node_shares,
    percentile,
    rate_series,
    summarize,
    window_stats,
    write_report,
)
from swarm.simnet._scenario import Promises
from swarm.simnet._workload import Recorder, RequestRecord


def rec(i: int, latency: float | None = 0.01, outcome: str = "ok", node: int | None = 0,
        at: float | None = None, price: float | None = 10.0) -> RequestRecord:
    scheduled = i * 0.1 if at is None else at
    return RequestRecord(index=i, model="builtin/mlp", items=1, scheduled=scheduled,
                         sent=scheduled if latency is not None else None, latency=latency,
                         outcome=outcome, node=node if outcome == "ok" else None,
                         attempts=1, price=price if outcome == "ok" else None)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy(q: float) -> None:
    rng = random.Random(q)
    values = [rng.expovariate(1.0) for _ in range(257)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_latency_stats_in_milliseconds() -> None:
    stats = latency_stats([0.001 * i for i in range(1, 101)])
    assert stats.count == 100
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.max == pytest.approx(100)
    assert stats.mean == pytest.approx(50.5)
    empty = latency_stats([])
    assert empty.count == 0
    assert math.isnan(empty.p99)


def test_node_shares_count_successes_only() -> None:
    records = [rec(0, node=0), rec(1, node=0), rec(2, node=1), rec(3, node=2),
               rec(4, outcome="UNAVAILABLE"), rec(5, node=None)]
    assert node_shares(records) == {0: 0.5, 1: 0.25, 2: 0.25}
    assert node_shares([]) == {}


def test_promises_kept_and_broken() -> None:
    promises = Promises(max_lost_requests=0, p99_ms=100)
    kept = evaluate_promises(promises, lost=0, p99_ms=99.9)
    assert [(p.name, p.kept) for p in kept] == [("lost requests", True), ("p99 latency (ms)", True)]
    lost, slow = evaluate_promises(promises, lost=1, p99_ms=100.1)
    assert not lost.kept
    assert lost.actual == 1
    assert lost.bound == 0
    assert not slow.kept
    assert "bound 100" in slow.describe()
    (_, nothing_served) = evaluate_promises(promises, lost=0, p99_ms=math.nan)
    assert not nothing_served.kept
    (only,) = evaluate_promises(Promises(max_lost_requests=3), lost=3, p99_ms=5000)
    assert only.kept


def test_summarize() -> None:
    records = [rec(i, latency=0.010 + 0.001 * i, node=i % 2) for i in range(20)]
    records += [rec(20, outcome="DEADLINE_EXCEEDED", latency=5.0), rec(21, outcome="SHED",
                                                                       latency=None),
                rec(22, outcome="UNAVAILABLE", latency=0.001)]
    faults = [FaultEvent(1, 1.01, "kill", "kill node 1", "applied"),
              FaultEvent(2, None, "rollout", "rollout builtin/mlp", "not available in this build")]
    s = summarize(records, duration=4.0, promises=Promises(p99_ms=1000), faults=faults)
    assert (s.requests, s.ok, s.lost) == (23, 20, 3)
    assert s.errors == {"DEADLINE_EXCEEDED": 1, "SHED": 1, "UNAVAILABLE": 1}
    assert s.throughput == 5.0
    assert s.latency.count == 20
    assert s.latency.max == pytest.approx(29)
    assert s.node_requests == {0: 10, 1: 10}
    assert s.node_share == {0: 0.5, 1: 0.5}
    assert s.mean_price == 10.0
    assert (s.faults_applied, s.faults_total) == (1, 2)
    assert [p.kept for p in s.promises] == [False, True]
    assert not s.kept
    ok_only = summarize(records[:20], duration=4.0, promises=Promises())
    assert ok_only.kept
    assert not summarize(records[:20], duration=4.0, promises=Promises(), interrupted=True).kept


def test_window_stats_look_at_recently_finished_requests() -> None:
    records = [rec(i, latency=0.05, at=float(i)) for i in range(10)]  # finish at i + 0.05
    records.append(rec(10, outcome="UNAVAILABLE", latency=0.01, at=8.5))
    w = window_stats(records, now=9.5, window=5.0)  # finished in [4.5, 9.5]: 5..9
    assert w.rate == pytest.approx(5 / 5.0)
    assert w.errors == 1
    assert w.node_counts == {0: 5}
    assert w.latency.p50 == pytest.approx(50)
    early = window_stats(records, now=1.0, window=5.0)  # the window cannot start before 0
    assert early.window == 1.0
    assert early.rate == pytest.approx(1.0)


def test_rate_series_bins_by_finish_time() -> None:
    records = [rec(0, latency=0.9, at=0.2, node=0), rec(1, latency=0.1, at=0.2, node=1),
               rec(2, latency=0.1, at=2.5, node=0), rec(3, outcome="UNAVAILABLE", at=1.0)]
    assert rate_series(records, duration=3.0) == {0: [0, 1, 1], 1: [1, 0, 0]}
    assert rate_series(records, duration=3.0, bin_s=0.5)[0] == [0, 0, 2, 0, 0, 2]


def test_write_report(tmp_path: Path) -> None:
    records = [rec(i, latency=0.01, node=i % 2) for i in range(30)] + [
        rec(30, outcome="UNAVAILABLE", latency=0.2)]
    faults = [FaultEvent(1.5, 1.52, "kill", "kill node 1", "applied"),
              FaultEvent(2.0, None, "rollback", "rollback builtin/mlp", "not available")]
    summary = summarize(records, duration=3.0, promises=Promises(), faults=faults)
    files = write_report(tmp_path / "r", title="simnet test", scenario={"name": "t"},
                         summary=summary, records=records, faults=faults, nodes=[],
                         notes=["a note"], started_at=0.0)
    assert [f.name for f in files] == ["report.json", "summary.md", "latency.png", "load.png"]
    for f in files:
        assert f.stat().st_size > 0
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files[0].read_text())
    assert data["summary"]["lost"] == 1
    assert data["summary"]["kept"] is False
    assert len(data["requests"]) == 31
    assert data["requests"][0]["outcome"] == "ok"
    assert data["faults"][1]["outcome"] == "not available"
    markdown = files[1].read_text()
    assert "| lost requests | 0 | 1 | FAIL |" in markdown
    assert "rollback builtin/mlp | not available" in markdown
    assert "- a note" in markdown


def test_a_run_that_answered_nothing_still_plots(tmp_path: Path) -> None:
    """No node answered (every request failed): no series to label, no legend, no warning
    (the suite turns warnings into errors; matplotlib warns about an empty legend)."""
    records = [rec(i, outcome="UNAVAILABLE", at=0.1 * i) for i in range(5)]
    summary = summarize(records, duration=1.0, promises=Promises(), faults=[])
    files = write_report(tmp_path / "r", title="nothing answered", scenario={"name": "t"},
                         summary=summary, records=records, faults=[], nodes=[], notes=[],
                         started_at=0.0)
    assert files[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_live_view_renders_rates_nodes_and_events() -> None:
    recorder = Recorder()
    recorder.started_at = asyncio.get_running_loop().time() - 10.0
    for i in range(100):  # one request every 0.1 s, answered in 20 ms, alternating nodes
        recorder.add(rec(i, latency=0.02, node=i % 2))
    recorder.in_flight = 2
    rows = [NodeRow(0, "up", 11, "127.0.0.1:1", 1.0), NodeRow(1, "slow", 12, "127.0.0.1:2", 4.0),
            NodeRow(2, "down", None, "127.0.0.1:3", 1.0)]
    view = LiveView(Console(width=120), title="simnet t", duration=30.0, recorder=recorder,
                    nodes=lambda: rows, events=lambda: ["3.0s  kill node 2: applied"], live=False)
    console = Console(width=120, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "simnet t  t = 10.0 / 30 s" in text
    assert "req/s" in text
    assert "p50 20 ms" in text
    assert "in flight 2" in text
    assert "slow x4" in text
    assert "down" in text
    assert "50%" in text
    assert "kill node 2: applied" in text
