"""Autoscaling in a simnet run: replicas over time, the nodes' scaling events, and the
run's autoscaling promises (`scale_up_replicas` within `scale_up_within_s`, `max_loads`,
`released_to`).

The run samples how many providers serve the workload's registry model (the client's
view) every `interval` seconds and asks every node for its scaling events (status RPC)
at the end; `summarize_autoscale` is pure over those.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc
from swarm.simnet._report import PromiseResult, percentile
from swarm.simnet._scenario import Promises, Workload, rate_at
from swarm.simnet._workload import RequestRecord

__all__ = ["AutoscaleSummary", "ReplicaSample", "ScalingRecord", "autoscale_lines",
           "autoscale_promises", "collect_events", "sample_replicas", "summarize_autoscale"]


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    # Seconds from the start of the workload.
    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScalingRecord:
    # Seconds from the start of the workload.
    at: float
    node: int
    action: str
    outcome: str
    reason: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class AutoscaleSummary:
    model: str
    # When the workload's rate first rose, and first fell after that (None: it did not).
    rise_at: float | None
    fall_at: float | None
    # Replicas wanted (the promise's, else the most seen) and when the swarm first had them.
    wanted: int
    enough_at: float | None
    max_replicas: int
    final_replicas: int
    loads: int
    unloads: int
    failed: int
    # p99 of successful requests (ms) sent before the rise, between the rise and enough
    # replicas, and from then until the fall.
    p99_before_ms: float
    p99_scaling_ms: float
    p99_after_ms: float
    samples: tuple[ReplicaSample, ...]
    events: tuple[ScalingRecord, ...]

    @property
    def replica_seconds(self) -> float:
        """Replicas x seconds over the samples from t = 0 (what serving the model cost)."""
        pts = [s for s in self.samples if s.at >= 0]
        return sum(a.replicas * (b.at - a.at) for a, b in itertools.pairwise(pts))

    @property
    def time_to_enough(self) -> float | None:
        if self.enough_at is None or self.rise_at is None:
            return None
        return self.enough_at - self.rise_at


def _changes(w: Workload, duration: float) -> tuple[float | None, float | None]:
    times = sorted({0.0, *(s.at for s in w.steps), *(b.at for b in w.bursts)})
    rates = [rate_at(w, t, duration) for t in times]
    rise = next((t for t, r in zip(times, rates, strict=True) if r > rates[0]), None)
    if rise is None:
        return None, None
    peak = rate_at(w, rise, duration)
    fall = next((t for t, r in zip(times, rates, strict=True) if t > rise and r < peak), None)
    return rise, fall


def _p99(records: Sequence[RequestRecord], start: float, end: float) -> float:
    latencies = [r.latency * 1000 for r in records
                 if r.ok and r.latency is not None and start <= r.scheduled < end]
    return percentile(latencies, 99) if latencies else math.nan


def summarize_autoscale(model: str, workload: Workload, duration: float, promises: Promises,
                        samples: Sequence[ReplicaSample], events: Sequence[ScalingRecord],
                        records: Sequence[RequestRecord],
                        final: int | None = None) -> AutoscaleSummary:
    """`final`: replicas at the end, when known better than the last sample."""
    rise, fall = _changes(workload, duration)
    most = max((s.replicas for s in samples), default=0)
    wanted = promises.scale_up_replicas if promises.scale_up_replicas is not None else most
    enough = next((s.at for s in samples if s.replicas >= wanted and (rise is None or s.at >= rise)),
                  None)
    done = [e for e in events if e.outcome == "done"]
    end_scaling = enough if enough is not None else (fall if fall is not None else duration)
    return AutoscaleSummary(
        model=model, rise_at=rise, fall_at=fall, wanted=wanted, enough_at=enough,
        max_replicas=most,
        final_replicas=final if final is not None else samples[-1].replicas if samples else 0,
        loads=sum(e.action == "load" for e in done),
        unloads=sum(e.action == "unload" for e in done),
        failed=sum(e.outcome == "failed" for e in events),
        p99_before_ms=_p99(records, 0.0, rise if rise is not None else duration),
        p99_scaling_ms=_p99(records, rise, end_scaling) if rise is not None else math.nan,
        p99_after_ms=(_p99(records, enough, fall if fall is not None else duration)
                      if enough is not None else math.nan),
        samples=tuple(samples), events=tuple(sorted(events, key=lambda e: e.at)))


def autoscale_promises(p: Promises, s: AutoscaleSummary) -> tuple[PromiseResult, ...]:
    results = []
    if p.scale_up_replicas is not None and p.scale_up_within_s is not None:
        took = s.time_to_enough
        results.append(PromiseResult(
            f"seconds to {p.scale_up_replicas} replicas", p.scale_up_within_s,
            math.nan if took is None else took,
            took is not None and took <= p.scale_up_within_s))
    if p.max_loads is not None:
        results.append(PromiseResult("autoscale loads", p.max_loads, s.loads,
                                     s.loads <= p.max_loads))
    if p.released_to is not None:
        results.append(PromiseResult("replicas at the end", p.released_to, s.final_replicas,
                                     s.final_replicas <= p.released_to))
    return tuple(results)


def autoscale_lines(s: AutoscaleSummary) -> list[str]:
    """Notes for the report: the scaling timeline in words."""
    def ms(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.0f} ms"

    took = s.time_to_enough
    lines = [
        f"autoscale {s.model}: rate rose at {s.rise_at}s, fell at {s.fall_at}s; "
        f"{s.wanted} replicas " + (f"after {took:.1f} s" if took is not None else "never reached")
        + f"; at most {s.max_replicas}, {s.final_replicas} at the end",
        f"autoscale: {s.loads} loads, {s.unloads} unloads, {s.failed} failed actions; p99 before "
        f"{ms(s.p99_before_ms)}, while scaling {ms(s.p99_scaling_ms)}, with enough replicas "
        f"{ms(s.p99_after_ms)}; {s.replica_seconds:.0f} replica-seconds",
    ]
    changes = []
    last = None
    for sample in s.samples:
        if sample.replicas != last:
            changes.append(f"{sample.at:.0f}s:{sample.replicas}")
            last = sample.replicas
    lines.append("autoscale replicas over time: " + " ".join(changes))
    lines += [f"autoscale event {e.at:6.1f}s node {e.node} {e.action} {e.outcome}"
              + (f" ({e.error})" if e.error else "") + f": {e.reason}" for e in s.events
              if e.outcome != "started"]
    return lines


async def sample_replicas(count: Callable[[], int], start: float, out: list[ReplicaSample],
                          interval: float = 0.5) -> None:
    """Append (time, replicas) every `interval` seconds until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        out.append(ReplicaSample(round(loop.time() - start, 2), count()))
        await asyncio.sleep(interval)


async def collect_events(addresses: Sequence[tuple[int, str]], start_wall: float,
                         digest: str = "", timeout: float = 5.0) -> tuple[list[ScalingRecord], int]:
    """Every reachable node's scaling events (status RPC), timed from `start_wall`, and how
    many of them serve `digest` now (what the nodes say, not a client's view)."""
    records: list[ScalingRecord] = []
    serving = 0
    for index, address in addresses:
        with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError):
            async with grpc.aio.insecure_channel(address) as channel:
                status = await node_pb2_grpc.NodeServiceStub(channel).GetStatus(
                    node_pb2.GetStatusRequest(), timeout=timeout)
            records += [ScalingRecord(round(e.at_unix_ns / 1e9 - start_wall, 2), index, e.action,
                                      e.outcome, e.reason, e.error) for e in status.scaling]
            serving += any(m.digest == digest for m in status.models)
    return records, serving
