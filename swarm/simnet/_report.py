"""What a run shows and leaves behind: the live view, the summary and the report folder.

Pure functions (percentile, latency_stats, node_shares, evaluate_promises,
summarize, window_stats, rate_series; summarize_chats, chat_promises and
token_times for chat traffic) turn request records into numbers; `LiveView` draws
them while the run goes on (rich); `write_report_folder` writes report.json
(summary + raw per-request data), summary.md, latency.png and load.png
(matplotlib, Agg canvas), and chat.png when the run streamed chats, for `swarm
simnet up` (`write_report`) and `swarm simnet virtual` (`write_virtual_report`) alike.
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
from swarm.simnet._workload import ChatRecord, Recorder, RequestRecord

__all__ = [
    "ChatNodeStats",
    "ChatSummary",
    "FaultEvent",
    "LatencyStats",
    "LiveView",
    "NodeRow",
    "PromiseResult",
    "Summary",
    "WindowStats",
    "chat_promises",
    "evaluate_promises",
    "latency_stats",
    "node_shares",
    "percentile",
    "plot_served_by_speed",
    "rate_series",
    "summarize",
    "summarize_chats",
    "token_times",
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
    # Chat traffic ([[workload.chat]]), when the run sent any.
    chat: ChatSummary | None = None

    @property
    def kept(self) -> bool:
        """Every promise kept, on a run that went to its end."""
        return not self.interrupted and all(p.kept for p in self.promises)


def summarize(records: Sequence[RequestRecord], *, duration: float, promises: Promises,
              faults: Sequence[FaultEvent] = (), interrupted: bool = False,
              chats: Sequence[ChatRecord] = ()) -> Summary:
    """The run in numbers. Chats are summed up apart (`Summary.chat`, with their own
    promises): the request numbers and promises are the tensor requests' alone."""
    ok = [r for r in records if r.ok]
    errors = Counter(r.outcome for r in records if not r.ok)
    latency = latency_stats([r.latency for r in ok if r.latency is not None])
    prices = [r.price for r in ok if r.price is not None]
    node_requests = Counter(r.node for r in ok if r.node is not None)
    lost = len(records) - len(ok)
    chat = summarize_chats(chats, duration=duration) if chats else None
    return Summary(
        requests=len(records), ok=len(ok), lost=lost, errors=dict(sorted(errors.items())),
        duration=duration, throughput=len(ok) / duration if duration > 0 else math.nan,
        latency=latency, node_requests=dict(sorted(node_requests.items())),
        node_share=node_shares(records),
        mean_price=sum(prices) / len(prices) if prices else None,
        faults_applied=sum(1 for f in faults if f.applied), faults_total=len(faults),
        promises=evaluate_promises(promises, lost=lost, p99_ms=latency.p99)
        + (chat_promises(promises, chat) if chat is not None else ()),
        interrupted=interrupted, chat=chat)


@dataclass(frozen=True, slots=True)
class ChatNodeStats:
    """The chats one node streamed to their end (by the node that sent the last chunk)."""

    node: int
    chats: int
    tokens: int
    # Tokens of those chats per second of workload.
    tokens_per_s: float
    # Milliseconds: time to first token (from the scheduled send time) and between tokens.
    ttft: LatencyStats
    itl: LatencyStats


@dataclass(frozen=True, slots=True)
class ChatSummary:
    chats: int
    ok: int
    # Chats without their whole answer: errors, deadlines, shed, cancelled.
    lost: int
    # Outcome -> count, failures only.
    errors: Mapping[str, int]
    # Tokens of the chats answered, and per second of workload.
    tokens: int
    tokens_per_s: float
    # Milliseconds, over the chats answered: time to first token, inter-token latency
    # (every gap), end to end.
    ttft: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    # Chats streamed by two or more providers (resumed after a failure).
    resumed: int
    nodes: tuple[ChatNodeStats, ...]


def summarize_chats(chats: Sequence[ChatRecord], *, duration: float) -> ChatSummary:
    ok = [c for c in chats if c.ok]
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: math.nan)
    nodes = []
    for node in sorted({c.node for c in ok if c.node is not None}):
        mine = [c for c in ok if c.node == node]
        tokens = sum(c.tokens for c in mine)
        nodes.append(ChatNodeStats(
            node, len(mine), tokens, per_s(tokens),
            latency_stats([c.ttft for c in mine if c.ttft is not None]),
            latency_stats([gap for c in mine for gap in c.itl])))
    tokens = sum(c.tokens for c in ok)
    return ChatSummary(
        chats=len(chats), ok=len(ok), lost=len(chats) - len(ok),
        errors=dict(sorted(Counter(c.outcome for c in chats if not c.ok).items())),
        tokens=tokens, tokens_per_s=per_s(tokens),
        ttft=latency_stats([c.ttft for c in ok if c.ttft is not None]),
        itl=latency_stats([gap for c in ok for gap in c.itl]),
        e2e=latency_stats([c.latency for c in ok if c.latency is not None]),
        resumed=sum(1 for c in ok if c.providers > 1), nodes=tuple(nodes))


def chat_promises(promises: Promises, chat: ChatSummary) -> tuple[PromiseResult, ...]:
    """The chat promises: lost chats, and the TTFT p99 bound when there is one (not kept
    when no chat was answered)."""
    results = [PromiseResult("lost chats", promises.max_lost_chats, chat.lost,
                             chat.lost <= promises.max_lost_chats)]
    if promises.ttft_p99_ms is not None:
        p99 = chat.ttft.p99
        results.append(PromiseResult("chat TTFT p99 (ms)", promises.ttft_p99_ms, p99,
                                     not math.isnan(p99) and p99 <= promises.ttft_p99_ms))
    return tuple(results)


def token_times(chat: ChatRecord) -> list[float]:
    """Seconds from the workload's start at which each of a chat's tokens arrived, rebuilt
    from its first token time and gaps (the first chunk's tokens all at the first)."""
    if chat.ttft is None:
        return []
    t = chat.scheduled + chat.ttft
    times = [t] * max(0, chat.tokens - len(chat.itl))
    for gap in chat.itl:
        t += gap
        times.append(t)
    return times


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
        line = (f"simnet t={now:5.1f}s  req/s={w.rate:5.1f}  p50={_fmt(w.latency.p50)}ms "
                f"p99={_fmt(w.latency.p99)}ms  errors={w.errors}  in-flight="
                f"{self._recorder.in_flight}  nodes up={up}/{len(self._nodes())}")
        chat = self._chat_line()
        return f"{line}\n{'':7}{chat}" if chat else line

    def _chat_line(self) -> str:
        """Chats so far (empty when the run has none)."""
        chats = self._recorder.chats
        if not chats and not self._recorder.chats_in_flight:
            return ""
        ok = [c for c in chats if c.ok]
        now = self._now()
        # Chats that ended in the window (a token in it belongs to one of them): a redraw
        # costs what the last seconds hold, not the whole run.
        recent = [c for c in ok if (f := c.finished) is not None and now - self._window <= f]
        ttft = latency_stats([c.ttft for c in recent if c.ttft is not None])
        itl = latency_stats([gap for c in recent for gap in c.itl])
        tokens = sum(1 for c in recent for t in token_times(c) if now - self._window <= t <= now)
        return (f"chat: {len(ok)} answered, {len(chats) - len(ok)} lost, in flight "
                f"{self._recorder.chats_in_flight}  TTFT p50={_fmt(ttft.p50)}ms "
                f"p99={_fmt(ttft.p99)}ms  ITL p50={_fmt(itl.p50)}ms  "
                f"tokens/s={tokens / self._window:.1f} (last {self._window:g} s)")

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
        chat = self._chat_line()
        if chat:
            parts += [Text(""), Text(chat)]
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
    chat = summary.chat
    if chat is not None:
        table.add_row("chats", f"{chat.chats} sent, {chat.ok} answered, {chat.lost} lost"
                      + (f" ({', '.join(f'{k} {v}' for k, v in chat.errors.items())})"
                         if chat.errors else "")
                      + (f", {chat.resumed} resumed elsewhere" if chat.resumed else ""))
        table.add_row("chat tokens", f"{chat.tokens} ({chat.tokens_per_s:.1f} tokens/s)")
        table.add_row("chat TTFT", _stats_text(chat.ttft))
        table.add_row("inter-token", _stats_text(chat.itl))
    for p in summary.promises:
        verdict = _verdict(p, summary.interrupted)
        style = {"PASS": "bold green", "FAIL": "bold red"}.get(verdict, "yellow")
        table.add_row("promise", f"[{style}]{verdict}[/]  {p.describe()}")
    if summary.interrupted:
        table.add_row("run", f"[bold yellow]interrupted[/] after {_secs(summary.duration)} s: "
                             "promises not judged")
    if chat is None or not chat.nodes:
        return table
    return Group(table, Text(""), chat_table(chat))


def _stats_text(stats: LatencyStats) -> str:
    return f"p50 {_fmt(stats.p50)} ms  p99 {_fmt(stats.p99)} ms  max {_fmt(stats.max)} ms"


CHAT_COLUMNS = ("node", "chats", "tokens", "tokens/s", "TTFT p50", "TTFT p99", "ITL p50",
                "ITL p99")  # 68 columns wide on the console: it fits a CI log's 80


def _chat_cells(n: ChatNodeStats) -> list[str]:
    return [str(n.node), str(n.chats), str(n.tokens), f"{n.tokens_per_s:.1f}", _fmt(n.ttft.p50),
            _fmt(n.ttft.p99), _fmt(n.itl.p50), _fmt(n.itl.p99)]


def chat_table(chat: ChatSummary) -> Table:
    """Per node: chats answered, tokens, tokens/s, TTFT and inter-token latency."""
    table = Table(title="chat per node (TTFT, inter-token latency: ms)", box=None,
                  padding=(0, 1), title_justify="left")
    for name in CHAT_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for n in chat.nodes:
        table.add_row(*_chat_cells(n))
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
    chat = summary.chat
    if chat is not None:
        lines += ["", "## Chat", "",
                  f"{chat.chats} chats sent, {chat.ok} answered, {chat.lost} lost"
                  + (f" ({', '.join(f'{k} {v}' for k, v in chat.errors.items())})"
                     if chat.errors else "")
                  + f"; {chat.tokens} tokens ({chat.tokens_per_s:.1f} tokens/s); "
                  f"TTFT p50 / p99 {_fmt(chat.ttft.p50)} / {_fmt(chat.ttft.p99)} ms; "
                  f"inter-token p50 / p99 {_fmt(chat.itl.p50)} / {_fmt(chat.itl.p99)} ms; "
                  f"end to end p50 / p99 {_fmt(chat.e2e.p50)} / {_fmt(chat.e2e.p99)} ms"
                  + (f"; {chat.resumed} resumed on another provider" if chat.resumed else "")
                  + ". Times from each chat's scheduled send time.", "",
                  "| " + " | ".join(CHAT_COLUMNS[:4]) + " | "
                  + " | ".join(f"{c} (ms)" for c in CHAT_COLUMNS[4:]) + " |",
                  "|" + "---|" * len(CHAT_COLUMNS)]
        lines += ["| " + " | ".join(_chat_cells(n)) + " |" for n in chat.nodes]
    if faults:
        lines += ["", "## Faults", "", "| at (s) | fault | outcome |", "|---|---|---|"]
        lines += [f"| {f.at:g} | {f.description} | {f.outcome} |" for f in faults]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "![latency](latency.png)", "", "![load per node](load.png)", ""]
    if chat is not None:
        lines += ["![chat per node](chat.png)", ""]
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


def plot_chat(path: Path, chats: Sequence[ChatRecord], faults: Sequence[FaultEvent], *,
              duration: float, title: str) -> None:
    """Chat traffic per node, next to load.png: tokens/s over time, each chat's time to
    first token, and inter-token latency p50/p99."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), dpi=110)
    rate_ax, ttft_ax, itl_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
    ok = [c for c in chats if c.ok and c.node is not None]
    nodes = sorted({c.node for c in ok if c.node is not None})
    bins = max(1, math.ceil(duration))
    colors = {node: f"C{i % 10}" for i, node in enumerate(nodes)}
    for node in nodes:
        mine = [c for c in ok if c.node == node]
        row = [0.0] * bins
        for t in (t for c in mine for t in token_times(c)):
            if 0 <= t < bins:
                row[int(t)] += 1
        rate_ax.plot([i + 0.5 for i in range(bins)], row, label=f"node {node}", linewidth=1.2,
                     color=colors[node])
        ttft_ax.scatter([c.scheduled for c in mine], [(c.ttft or 0) * 1000 for c in mine],
                        s=14, label=f"node {node}", color=colors[node])
    lost = [c for c in chats if not c.ok]
    if lost:
        ttft_ax.scatter([c.scheduled for c in lost], [(c.latency or 0) * 1000 for c in lost],
                        s=20, marker="x", color="tab:red", label="lost (at its end)")
    for ax in (rate_ax, ttft_ax):
        _fault_markers(ax, faults)
        ax.set_xlim(0, duration)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    rate_ax.set_xlabel("time (s)")
    rate_ax.set_ylabel("tokens/s streamed")
    rate_ax.set_title("tokens/s per node")
    ttft_ax.set_xlabel("send time (s)")
    ttft_ax.set_ylabel("time to first token (ms)")
    ttft_ax.set_title("TTFT per chat")
    stats = summarize_chats(chats, duration=duration).nodes
    xs = range(len(stats))
    for offset, q, label in ((-0.2, "p50", "p50"), (0.2, "p99", "p99")):
        itl_ax.bar([x + offset for x in xs], [getattr(n.itl, q) for n in stats], width=0.4,
                   label=label)
    itl_ax.set_xticks(list(xs), [f"node {n.node}" for n in stats])
    itl_ax.set_ylabel("inter-token latency (ms)")
    itl_ax.set_title("inter-token latency per node")
    itl_ax.grid(alpha=0.3, axis="y")
    _legend(itl_ax)
    fig.suptitle(title)
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
                 nodes: Sequence[Any], notes: Sequence[str], started_at: float,
                 chats: Sequence[ChatRecord] = ()) -> list[Path]:
    """Write report.json, summary.md, latency.png, load.png (and chat.png when there
    were chats); return their paths."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at))

    def load(path: Path) -> None:
        plot_load(path, records, faults, duration=summary.duration,
                  title=f"{title}: load per node")

    return write_report_folder(folder, title=title, scenario=scenario, summary=summary,
                               records=records, faults=faults, notes=notes,
                               extra={"started_at": started, "nodes": _jsonable(list(nodes))},
                               plot_load=load, chats=chats)


def write_report_folder(folder: Path, *, title: str, scenario: Any, summary: Summary,
                        records: Sequence[RequestRecord], faults: Sequence[FaultEvent],
                        notes: Sequence[str], extra: Mapping[str, Any],
                        plot_load: Callable[[Path], None], indent: int | None = 1,
                        plot_sample: int | None = None,
                        chats: Sequence[ChatRecord] = ()) -> list[Path]:
    """The folder every simnet run leaves: report.json (title, scenario, summary, faults,
    notes, `extra`, then every request and every chat), summary.md, latency.png (of at
    most `plot_sample` requests, evenly spaced), load.png (drawn by `plot_load`) and, when
    there were chats, chat.png; returns their paths.

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
    if chats:
        report["chats"] = [_jsonable(c) for c in sorted(chats, key=lambda c: c.index)]
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
    if chats:
        paths.append(folder / "chat.png")
        plot_chat(paths[4], chats, faults, duration=summary.duration, title=f"{title}: chat")
    return paths
