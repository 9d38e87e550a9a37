"""Summary numbers, promise checks and the report folder, from hand-made request records."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from swarm.simnet._report import (
    FaultEvent,
    LiveView,
    NodeRow,
    chat_promises,
    evaluate_promises,
    latency_stats,
    node_shares,
    percentile,
    rate_series,
    render_summary,
    summarize,
    summarize_chats,
    token_times,
    window_stats,
    write_report,
)
from swarm.simnet._scenario import Promises
from swarm.simnet._workload import ChatRecord, Recorder, RequestRecord


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


# --------------------------------------------------------------------------- chat traffic


def chat(i: int, node: int | None = 0, *, ttft: float = 0.2, gaps: tuple[float, ...] = (0.05,) * 3,
         tokens: int = 4, outcome: str = "ok", at: float | None = None,
         providers: int = 1) -> ChatRecord:
    scheduled = float(i) if at is None else at
    latency = ttft + sum(gaps)
    return ChatRecord(index=i, model="builtin/smollm2", scheduled=scheduled, sent=scheduled,
                      latency=latency, outcome=outcome, ttft=ttft, itl=gaps, tokens=tokens,
                      node=node, providers=providers,
                      finish_reason="length" if outcome == "ok" else None)


def chat_records() -> list[ChatRecord]:
    """Node 0: three chats (TTFT 100, 200, 300 ms; gaps of 40 ms); node 1: one (TTFT 1 s,
    gaps 10 ms and 190 ms) resumed from another provider; one lost, one shed."""
    return [chat(0, 0, ttft=0.1, gaps=(0.04,) * 3), chat(1, 0, ttft=0.2, gaps=(0.04,) * 3),
            chat(2, 0, ttft=0.3, gaps=(0.04,) * 3),
            chat(3, 1, ttft=1.0, gaps=(0.01, 0.19), tokens=3, providers=2),
            chat(4, 1, ttft=0.5, gaps=(0.1,), tokens=2, outcome="UNAVAILABLE"),
            ChatRecord(5, "builtin/smollm2", 5.0, None, None, "SHED")]


def test_chat_summary_per_node() -> None:
    c = summarize_chats(chat_records(), duration=5.0)
    assert (c.chats, c.ok, c.lost) == (6, 4, 2)
    assert c.errors == {"SHED": 1, "UNAVAILABLE": 1}
    assert c.tokens == 15  # answered chats only
    assert c.tokens_per_s == 3.0
    assert c.resumed == 1
    assert c.ttft.count == 4
    assert c.ttft.p50 == pytest.approx(250)
    assert c.itl.count == 11
    assert c.itl.p50 == pytest.approx(40)
    assert c.e2e.max == pytest.approx(1200)
    zero, one = c.nodes
    assert (zero.node, zero.chats, zero.tokens, zero.tokens_per_s) == (0, 3, 12, 2.4)
    assert (zero.ttft.p50, zero.ttft.max) == (pytest.approx(200), pytest.approx(300))
    assert zero.itl.p99 == pytest.approx(40)
    assert (one.node, one.chats, one.tokens, one.tokens_per_s) == (1, 1, 3, 0.6)
    assert one.ttft.p50 == pytest.approx(1000)
    assert (one.itl.p50, one.itl.max) == (pytest.approx(100), pytest.approx(190))


def test_chat_promises_and_their_place_in_the_summary() -> None:
    records = [rec(i) for i in range(10)]
    chats = chat_records()
    s = summarize(records, duration=5.0, promises=Promises(max_lost_chats=2, ttft_p99_ms=1500),
                  chats=chats)
    assert s.requests == 10  # chats are summed up apart
    assert s.chat is not None
    assert s.chat.lost == 2
    assert [(p.name, p.kept) for p in s.promises] == [
        ("lost requests", True), ("lost chats", True), ("chat TTFT p99 (ms)", True)]
    assert s.kept
    strict = summarize(records, duration=5.0, promises=Promises(ttft_p99_ms=900), chats=chats)
    assert [(p.name, p.actual, p.kept) for p in strict.promises[1:]] == [
        ("lost chats", 2, False), ("chat TTFT p99 (ms)", pytest.approx(979, abs=1), False)]
    # No chat answered: a TTFT bound is not kept; no chats at all: no chat promise.
    lost = chat_promises(Promises(ttft_p99_ms=1e9, max_lost_chats=5),
                         summarize_chats(chats[4:], duration=5.0))
    assert [p.kept for p in lost] == [True, False]
    assert summarize(records, duration=5.0, promises=Promises()).chat is None
    assert len(summarize(records, duration=5.0, promises=Promises()).promises) == 1


def test_token_times_rebuild_each_tokens_arrival() -> None:
    # Two tokens in the first chunk (at 2.0 + 0.5), then gaps of 0.1 and 0.2.
    record = chat(0, at=2.0, ttft=0.5, gaps=(0.1, 0.2), tokens=4)
    assert token_times(record) == pytest.approx([2.5, 2.5, 2.6, 2.8])
    assert token_times(ChatRecord(1, "m", 0.0, None, None, "SHED")) == []


def test_write_report_with_chats(tmp_path: Path) -> None:
    records = [rec(i, node=i % 2) for i in range(20)]
    chats = chat_records()
    summary = summarize(records, duration=6.0, promises=Promises(ttft_p99_ms=5000), chats=chats)
    files = write_report(tmp_path / "r", title="simnet chat", scenario={"name": "t"},
                         summary=summary, records=records, faults=[], nodes=[], notes=[],
                         started_at=0.0, chats=chats)
    assert [f.name for f in files] == ["report.json", "summary.md", "latency.png", "load.png",
                                       "chat.png"]
    assert files[4].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files[0].read_text())
    assert len(data["requests"]) == 20
    assert [c["index"] for c in data["chats"]] == list(range(6))
    assert data["chats"][3]["itl"] == [0.01, 0.19]
    assert data["summary"]["chat"]["nodes"][0]["tokens"] == 12
    markdown = files[1].read_text()
    assert "## Chat" in markdown
    assert "| node | chats | tokens | tokens/s | TTFT p50 (ms) |" in markdown
    assert "| 0 | 3 | 12 | 2.0 | 200 | 298 | 40 | 40 |" in markdown
    assert "| 1 | 1 | 3 | 0.5 | 1000 | 1000 | 100 | 188 |" in markdown
    assert "| chat TTFT p99 (ms) | 5000 | 979 | PASS |" in markdown
    assert "![chat per node](chat.png)" in markdown
    # The console's summary ends with the per-node chat table.
    console = Console(width=120, record=True)
    console.print(render_summary(summary, title="simnet chat"))
    text = console.export_text()
    assert "6 sent, 4 answered, 2 lost (SHED 1, UNAVAILABLE 1), 1 resumed elsewhere" in text
    assert "chat per node" in text
    assert "tokens/s" in text
    assert re.search(r"\n\s+0\s+3\s+12\s+2\.0\s+200\s+298\s+40\s+40\s*\n", text), text
    narrow = Console(width=80, record=True)  # a CI log: every header whole
    narrow.print(render_summary(summary, title="simnet chat"))
    assert "node  chats  tokens  tokens/s  TTFT p50  TTFT p99  ITL p50  ITL p99" in \
        narrow.export_text()


def test_chat_plot_with_nothing_answered(tmp_path: Path) -> None:
    chats = [chat(0, None, outcome="DEADLINE_EXCEEDED"), ChatRecord(1, "m", 1.0, None, None,
                                                                      "SHED")]
    summary = summarize([rec(0)], duration=2.0, promises=Promises(), chats=chats)
    files = write_report(tmp_path / "r", title="t", scenario={}, summary=summary,
                         records=[rec(0)], faults=[], nodes=[], notes=[], started_at=0.0,
                         chats=chats)
    assert files[4].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_live_view_shows_chats() -> None:
    recorder = Recorder()
    # 5.5 s into the run: the 5 s window starts at 0.5 s (0.7 s of slack on a slow machine)
    recorder.started_at = asyncio.get_running_loop().time() - 5.5
    for c in chat_records():
        recorder.add_chat(c)
    recorder.chats_in_flight = 1
    view = LiveView(Console(width=160), title="t", duration=30.0, recorder=recorder,
                    nodes=lambda: [], events=lambda: [], live=False)
    console = Console(width=160, record=True)
    console.print(view.render())
    text = console.export_text()
    # Counts over the run; times and tokens/s over the chats that ended in the last 5 s
    # (chats 1-3: their tokens from 1.2 s on, ending at 4.2 s; chat 0 ended at 0.2 s).
    assert "chat: 4 answered, 2 lost, in flight 1  TTFT p50=300ms p99=986ms" in text
    assert "tokens/s=2.2 (last 5 s)" in text  # chats 1-3: 4 + 4 + 3 tokens
    assert "chat: 4 answered" in view._line()
    assert "chat" not in LiveView(Console(), title="t", duration=1.0, recorder=Recorder(),
                                  nodes=lambda: [], events=lambda: [], live=False)._line()
