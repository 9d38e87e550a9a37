"""What a run shows and leaves behind: the live view, the summary and the report folder.

Pure functions (percentile, latency_stats, node_shares, evaluate_promises,
summarize, window_stats, rate_series) turn request records into numbers;
`LiveView` draws them while the run goes on (rich); `write_report_folder` writes
report.json (summary + raw per-request data), summary.md, latency.png and
load.png (matplotlib, Agg canvas) for `swarm simnet up` (`write_report`) and
`swarm simnet virtual` (`write_virtual_report`) alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from swarm.simnet._scenario import Promises
from swarm.simnet._workload import Recorder, RequestRecord

__all__ = [
    "FaultEvent",
    "LatencyStats",
    "LiveView",
    "NodeRow",
    "PromiseResult",
    "Summary",
    "WindowStats",
    "evaluate_promises",
    "latency_stats",
    "node_shares",
    "percentile",
    "plot_served_by_speed",
    "rate_series",
    "summarize",
    "window_stats",
    "write_report",
    "write_report_folder",
]


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); nan if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Milliseconds; nan when there are no samples."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats:
    ms = [x * 1000 for x in latencies_s]
    if not ms:
        return LatencyStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return LatencyStats(len(ms), percentile(ms, 50), percentile(ms, 95), percentile(ms, 99),
                        sum(ms) / len(ms), max(ms))


def node_shares(records: Iterable[RequestRecord]) -> dict[int, float]:
    """Fraction of the successful requests each node answered (nodes with none are absent)."""
    counts = Counter(r.node for r in records if r.ok and r.node is not None)
    total = sum(counts.values())
    return {node: counts[node] / total for node in sorted(counts)}


@dataclass(frozen=True, slots=True)
class PromiseResult:
    name: str
    bound: float
    actual: float
    kept: bool

    def describe(self) -> str:
        return f"{self.name}: {_fmt(self.actual)} (bound {_fmt(self.bound)})"


def evaluate_promises(promises: Promises, *, lost: int, p99_ms: float) -> tuple[PromiseResult, ...]:
    """One result per promise the scenario makes. A p99 bound with no successful request
    (p99 is nan) is not kept."""
    results = [PromiseResult("lost requests", promises.max_lost_requests, lost,
                             lost <= promises.max_lost_requests)]
    if promises.p99_ms is not None:
        results.append(PromiseResult("p99 latency (ms)", promises.p99_ms, p99_ms,
                                     not math.isnan(p99_ms) and p99_ms <= promises.p99_ms))
    return tuple(results)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """What happened to one action of the fault timeline."""

    # Seconds from the start of the workload: planned, and when it took effect.
    at: float
    applied_at: float | None
    kind: str
    description: str
    # "applied", or why not: "not available in this build: ...", "unsupported: ...",
    # "failed: ...".
    outcome: str

    @property
    def applied(self) -> bool:
        return self.outcome == "applied"


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    ok: int
    # Requests without a result: errors, deadlines, shed, cancelled.
    lost: int
    # Outcome -> count, failures only.
    errors: Mapping[str, int]
    # Seconds of workload, and successful requests per second over them.
    duration: float
    throughput: float
    # Successful requests, from scheduled send time to answer.
    latency: LatencyStats
    node_requests: Mapping[int, int]
    node_share: Mapping[int, float]
    # Micro-units per successful request (None when no price was known).
    mean_price: float | None
    faults_applied: int
    faults_total: int
    promises: tuple[PromiseResult, ...]
    interrupted: bool = False

    @property
    def kept(self) -> bool:
        """Every promise kept, on a run that went to its end."""
        return not self.interrupted and all(p.kept for p in self.promises)


def summarize(records: Sequence[RequestRecord], *, duration: float, promises: Promises,
              faults: Sequence[FaultEvent] = (), interrupted: bool = False) -> Summary:
    ok = [r for r in records if r.ok]
    errors = Counter(r.outcome for r in records if not r.ok)
    latency = latency_stats([r.latency for r in ok if r.latency is not None])
    prices = [r.price for r in ok if r.price is not None]
    node_requests = Counter(r.node for r in ok if r.node is not None)
    lost = len(records) - len(ok)
    return Summary(
        requests=len(records), ok=len(ok), lost=lost, errors=dict(sorted(errors.items())),
        duration=duration, throughput=len(ok) / duration if duration > 0 else math.nan,
        latency=latency, node_requests=dict(sorted(node_requests.items())),
        node_share=node_shares(records),
        mean_price=sum(prices) / len(prices) if prices else None,
        faults_applied=sum(1 for f in faults if f.applied), faults_total=len(faults),
        promises=evaluate_promises(promises, lost=lost, p99_ms=latency.p99),
        interrupted=interrupted)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Requests that finished in the last `window` seconds."""

    window: float
    rate: float
    latency: LatencyStats
    errors: int
    node_counts: Mapping[int, int]


def window_stats(records: Sequence[RequestRecord], now: float, window: float) -> WindowStats:
    """`now` in seconds from the start of the workload."""
    start = max(0.0, now - window)
    recent = [r for r in records if (f := r.finished) is not None and start <= f <= now]
    span = max(now - start, 1e-9)
    ok = [r for r in recent if r.ok]
    return WindowStats(
        window=span, rate=len(ok) / span,
        latency=latency_stats([r.latency for r in ok if r.latency is not None]),
        errors=sum(1 for r in recent if not r.ok),
        node_counts=dict(Counter(r.node for r in ok if r.node is not None)))


def rate_series(records: Iterable[RequestRecord], *, duration: float,
                bin_s: float = 1.0) -> dict[int, list[float]]:
    """Per node, successful requests per second in consecutive bins (by finish time)."""
    bins = max(1, math.ceil(duration / bin_s))
    series: dict[int, list[float]] = {}
    for r in records:
        f = r.finished
        if not r.ok or r.node is None or f is None:
            continue
        row = series.setdefault(r.node, [0.0] * bins)
        i = int(f // bin_s)
        if 0 <= i < bins:
            row[i] += 1 / bin_s
    return dict(sorted(series.items()))


def _secs(value: float) -> str:
    """Seconds to a tenth, without trailing zeros: 30, 4.2."""
    return f"{value:.1f}".removesuffix(".0")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


# --------------------------------------------------------------------------- live view


@dataclass(frozen=True, slots=True)
class NodeRow:
    index: int
    status: str
    pid: int | None
    grpc: str
    slowdown: float


_STATUS_STYLE = {"up": "green", "slow": "yellow", "starting": "cyan", "left": "blue",
                 "down": "bold red"}


class LiveView:
    """Redraws while the run goes on: rich Live on a terminal, a line every few seconds
    otherwise (CI logs)."""

    def __init__(self, console: Console, *, title: str, duration: float, recorder: Recorder,
                 nodes: Callable[[], Sequence[NodeRow]], events: Callable[[], Sequence[str]],
                 window: float = 5.0, live: bool | None = None) -> None:
        self._console = console
        self._title = title
        self._duration = duration
        self._recorder = recorder
        self._nodes = nodes
        self._events = events
        self._window = window
        self._live = console.is_terminal if live is None else live

    def _now(self) -> float:
        start = self._recorder.started_at
        return 0.0 if start is None else asyncio.get_running_loop().time() - start

    async def run(self) -> None:
        """Draw until cancelled."""
        if not self._live:
            shown = len(list(self._events()))  # what exists now was printed before the run
            ticks = 0
            while True:
                await asyncio.sleep(0.5)
                ticks += 1
                events = list(self._events())
                for event in events[shown:]:
                    self._console.print(f"simnet: {event.strip()}", highlight=False)
                shown = len(events)
                if ticks % 10 == 0:
                    self._console.print(self._line(), highlight=False)
        with Live(self.render(), console=self._console, refresh_per_second=4,
                  transient=False) as live:
            while True:
                await asyncio.sleep(0.25)
                live.update(self.render())

    def _line(self) -> str:
        now = self._now()
        w = window_stats(self._recorder.records, now, self._window)
        up = sum(1 for n in self._nodes() if n.status in ("up", "slow"))
        return (f"simnet t={now:5.1f}s  req/s={w.rate:5.1f}  p50={_fmt(w.latency.p50)}ms "
                f"p99={_fmt(w.latency.p99)}ms  errors={w.errors}  in-flight="
                f"{self._recorder.in_flight}  nodes up={up}/{len(self._nodes())}")

    def render(self) -> RenderableType:
        now = self._now()
        records = self._recorder.records
        w = window_stats(records, now, self._window)
        done = len(records)
        failed = sum(1 for r in records if not r.ok)
        head = Table.grid(padding=(0, 3))
        for _ in range(7):
            head.add_column()
        head.add_row(f"[bold]{w.rate:5.1f}[/] req/s", f"p50 [bold]{_fmt(w.latency.p50)}[/] ms",
                     f"p95 [bold]{_fmt(w.latency.p95)}[/] ms",
                     f"p99 [bold]{_fmt(w.latency.p99)}[/] ms",
                     f"[dim](last {self._window:g} s)[/]",
                     f"in flight {self._recorder.in_flight}",
                     f"done {done}  errors " + (f"[bold red]{failed}[/]" if failed else "0"))
        nodes = Table("node", "status", "pid", "grpc", f"load (last {self._window:g} s)", "share",
                      box=None, padding=(0, 1))
        total = sum(w.node_counts.values())
        for n in self._nodes():
            count = w.node_counts.get(n.index, 0)
            share = count / total if total else 0.0
            bar = "█" * round(share * 30)
            status = n.status + (f" x{n.slowdown:g}" if n.slowdown > 1 else "")
            nodes.add_row(str(n.index), Text(status, style=_STATUS_STYLE.get(n.status, "")),
                          str(n.pid or "-"), n.grpc or "-", Text(bar.ljust(30, "·"), style="cyan"),
                          f"{share:4.0%}")
        parts: list[RenderableType] = [head, Text(""), nodes]
        events = list(self._events())[-6:]
        if events:
            parts += [Text(""), Text("\n".join(events), style="dim")]
        progress = min(now, self._duration)
        return Panel(Group(*parts), title=f"{self._title}  t = {progress:4.1f} / "
                                          f"{self._duration:g} s", title_align="left")


# --------------------------------------------------------------------------- final report


def render_summary(summary: Summary, *, title: str,
                   faults: Sequence[FaultEvent] = ()) -> RenderableType:
    """The end-of-run table shown on the console."""
    table = Table(title=title, show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    lat = summary.latency
    table.add_row("requests", f"{summary.requests} sent, {summary.ok} ok, {summary.lost} lost")
    table.add_row("throughput", f"{summary.throughput:.1f} req/s over {_secs(summary.duration)} s")
    table.add_row("latency", f"p50 {_fmt(lat.p50)} ms  p95 {_fmt(lat.p95)} ms  "
                             f"p99 {_fmt(lat.p99)} ms  max {_fmt(lat.max)} ms")
    table.add_row("errors", ", ".join(f"{k} {v}" for k, v in summary.errors.items()) or "none")
    table.add_row("per node", "  ".join(f"{n}: {s:.0%}" for n, s in summary.node_share.items())
                  or "-")
    table.add_row("mean price", "unknown" if summary.mean_price is None
                  else f"{summary.mean_price:.1f} micro-units/request")
    if summary.faults_total:
        style = "" if summary.faults_applied == summary.faults_total else "[yellow]"
        table.add_row("faults", f"{style}{summary.faults_applied}/{summary.faults_total} applied")
        for f in faults:
            if not f.applied:
                table.add_row("", Text(f"{f.description}: {f.outcome}", style="yellow"))
    for p in summary.promises:
        verdict = _verdict(p, summary.interrupted)
        style = {"PASS": "bold green", "FAIL": "bold red"}.get(verdict, "yellow")
        table.add_row("promise", f"[{style}]{verdict}[/]  {p.describe()}")
    if summary.interrupted:
        table.add_row("run", f"[bold yellow]interrupted[/] after {_secs(summary.duration)} s: "
                             "promises not judged")
    return table


def _verdict(promise: PromiseResult, interrupted: bool) -> str:
    """PASS or FAIL; a run stopped early judges nothing (its numbers are shown as they are)."""
    if interrupted:
        return "not judged"
    return "PASS" if promise.kept else "FAIL"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def summary_markdown(summary: Summary, *, title: str, faults: Sequence[FaultEvent],
                     notes: Sequence[str]) -> str:
    lat = summary.latency
    lines = [f"# {title}", "",
             "| | |", "|---|---|",
             f"| requests | {summary.requests} sent, {summary.ok} ok, {summary.lost} lost |",
             f"| throughput | {summary.throughput:.1f} req/s over {_secs(summary.duration)} s |",
             f"| latency p50 / p95 / p99 / max | {_fmt(lat.p50)} / {_fmt(lat.p95)} / "
             f"{_fmt(lat.p99)} / {_fmt(lat.max)} ms |",
             "| errors | " + (", ".join(f"{k} {v}" for k, v in summary.errors.items()) or "none")
             + " |",
             "| mean price | " + ("unknown" if summary.mean_price is None
                                  else f"{summary.mean_price:.1f} micro-units/request") + " |",
             "", "## Promises", "", "| promise | bound | actual | verdict |", "|---|---|---|---|"]
    for p in summary.promises:
        lines.append(f"| {p.name} | {_fmt(p.bound)} | {_fmt(p.actual)} | "
                     f"{_verdict(p, summary.interrupted)} |")
    if summary.interrupted:
        lines += ["", f"**The run was interrupted after {_secs(summary.duration)} s: promises "
                      "are not judged.**"]
    lines += ["", "## Per node", "", "| node | requests | share |", "|---|---|---|"]
    for node, count in summary.node_requests.items():
        lines.append(f"| {node} | {count} | {summary.node_share.get(node, 0):.1%} |")
    if faults:
        lines += ["", "## Faults", "", "| at (s) | fault | outcome |", "|---|---|---|"]
        lines += [f"| {f.at:g} | {f.description} | {f.outcome} |" for f in faults]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "![latency](latency.png)", "", "![load per node](load.png)", ""]
    return "\n".join(lines)


def _fault_markers(ax: Any, faults: Sequence[FaultEvent]) -> None:
    for f in faults:
        at = f.applied_at if f.applied_at is not None else f.at
        style = "-" if f.applied else ":"
        ax.axvline(at, color="tab:red" if f.applied else "tab:gray", linestyle=style,
                   linewidth=1)
        ax.annotate(f.description + ("" if f.applied else " (not applied)"), (at, 1.0),
                    xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                    fontsize=7, color="tab:red" if f.applied else "tab:gray")


def plot_latency(path: Path, records: Sequence[RequestRecord], faults: Sequence[FaultEvent],
                 *, duration: float, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax = fig.add_subplot()
    ok = [r for r in records if r.ok and r.latency is not None]
    bad = [r for r in records if not r.ok and r.latency is not None]
    ax.scatter([r.scheduled for r in ok], [max(r.latency or 0, 1e-4) * 1000 for r in ok], s=9,
               alpha=0.7, label="ok", color="tab:blue", linewidths=0)
    if bad:
        ax.scatter([r.scheduled for r in bad], [max(r.latency or 0, 1e-4) * 1000 for r in bad],
                   s=18, marker="x", color="tab:red", label="failed")
    bins = max(1, math.ceil(duration))
    for q, style in ((50, "-"), (99, "--")):
        xs, ys = [], []
        for b in range(bins):
            lat = [r.latency * 1000 for r in ok if r.latency is not None and b <= r.scheduled < b + 1]
            if lat:
                xs.append(b + 0.5)
                ys.append(percentile(lat, q))
        ax.plot(xs, ys, style, color="black", linewidth=1, label=f"p{q} per second")
    _fault_markers(ax, faults)
    if ok or bad:
        ax.set_yscale("log")
    ax.set_xlim(0, duration)
    ax.set_xlabel("send time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    _legend(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _legend(ax: Any) -> None:
    """A legend when something is labelled (a run that answered nothing has no series;
    matplotlib warns about an empty legend)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)


def plot_load(path: Path, records: Sequence[RequestRecord], faults: Sequence[FaultEvent],
              *, duration: float, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax = fig.add_subplot()
    for node, row in rate_series(records, duration=duration).items():
        ax.plot([i + 0.5 for i in range(len(row))], row, label=f"node {node}", linewidth=1.2)
    _fault_markers(ax, faults)
    ax.set_xlim(0, duration)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests/s answered")
    ax.set_title(title)
    _legend(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_served_by_speed(path: Path, providers: Sequence[Mapping[str, Any]], *,
                         title: str) -> None:
    """Requests each provider answered against its slowness (thousands of providers)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax = fig.add_subplot()
    rows = sorted(providers, key=lambda p: (p["slowness"], p["index"]))
    ax.scatter([p["slowness"] for p in rows], [p["served"] for p in rows], s=6, alpha=0.6)
    ax.set_xlabel("slowness (1 = fastest)")
    ax.set_ylabel("requests answered")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_report(folder: Path, *, title: str, scenario: Any, summary: Summary,
                 records: Sequence[RequestRecord], faults: Sequence[FaultEvent],
                 nodes: Sequence[Any], notes: Sequence[str], started_at: float) -> list[Path]:
    """Write report.json, summary.md, latency.png and load.png; return their paths."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at))

    def load(path: Path) -> None:
        plot_load(path, records, faults, duration=summary.duration,
                  title=f"{title}: load per node")

    return write_report_folder(folder, title=title, scenario=scenario, summary=summary,
                               records=records, faults=faults, notes=notes,
                               extra={"started_at": started, "nodes": _jsonable(list(nodes))},
                               plot_load=load)


def write_report_folder(folder: Path, *, title: str, scenario: Any, summary: Summary,
                        records: Sequence[RequestRecord], faults: Sequence[FaultEvent],
                        notes: Sequence[str], extra: Mapping[str, Any],
                        plot_load: Callable[[Path], None], indent: int | None = 1,
                        plot_sample: int | None = None) -> list[Path]:
    """The folder every simnet run leaves: report.json (title, scenario, summary, faults,
    notes, `extra`, then every request), summary.md, latency.png (of at most `plot_sample`
    requests, evenly spaced) and load.png (drawn by `plot_load`); returns their paths.

    `indent=None` writes compact JSON (C-encoded: much faster at 100,000s of requests).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(records, key=lambda r: r.index)
    report = {
        "title": title,
        "scenario": _jsonable(scenario),
        "summary": {**_jsonable(summary), "kept": summary.kept},
        "faults": _jsonable(list(faults)),
        "notes": list(notes),
        **extra,
        "requests": [_jsonable(r) for r in ordered],
    }
    paths = [folder / "report.json", folder / "summary.md", folder / "latency.png",
             folder / "load.png"]
    paths[0].write_text(json.dumps(report, indent=indent) + "\n")
    paths[1].write_text(summary_markdown(summary, title=title, faults=faults, notes=notes))
    plotted, latency_title = ordered, f"{title}: latency"
    if plot_sample is not None and len(ordered) > plot_sample:
        step = len(ordered) / plot_sample
        plotted = [ordered[int(i * step)] for i in range(plot_sample)]
        latency_title += f" ({len(plotted)} of {len(ordered)} requests)"
    plot_latency(paths[2], plotted, faults, duration=summary.duration, title=latency_title)
    plot_load(paths[3])
    return paths
