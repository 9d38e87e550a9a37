"""One run of a scenario: start the swarm, drive the workload, apply the faults, report.

    result = await run_scenario(scenario, RunOptions(report_dir=Path("reports/x")), stop=event)

Setting `stop` ends the run early (Ctrl-C): in-flight requests are cancelled and
recorded, every node is stopped, and the partial report is still written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from swarm._errors import ConfigError, SwarmError
from swarm._types import Digest
from swarm.client import AsyncClient
from swarm.simnet._autoscale import (
    ReplicaSample,
    autoscale_lines,
    autoscale_promises,
    collect_events,
    sample_replicas,
    summarize_autoscale,
)
from swarm.simnet._cluster import Cluster, ClusterConfig, NetworkLayer, NodeStatus, start_cluster
from swarm.simnet._registry import PublishedModels, publish_models, registry_refs
from swarm.simnet._report import (
    FaultEvent,
    LiveView,
    NodeRow,
    Summary,
    render_summary,
    summarize,
    write_report,
)
from swarm.simnet._scenario import Fault, FaultKind, Scenario, plan_chats, plan_requests
from swarm.simnet._staking import (
    ReportLog,
    StakingFindings,
    check_staking,
    staking_lines,
    staking_promises,
)
from swarm.simnet._workload import (
    Endpoint,
    Recorder,
    RoundRobinRouter,
    SchedulerRouter,
    drive,
    drive_chats,
)

__all__ = ["RunOptions", "RunResult", "run_scenario"]

@dataclass(frozen=True, slots=True)
class RunOptions:
    # Folder for report.json, summary.md, the plots and logs/node-<i>.log.
    report_dir: Path
    # Live view: True, False, or None for "when the console is a terminal".
    live: bool | None = None
    # Each node in its own network namespace (root only).
    netns: bool = False
    # Peer-to-peer discovery between the nodes.
    p2p: bool = True
    # Seconds a node may take to start.
    start_timeout: float = 120.0
    # "scheduler" (the SDK's swarm-aware client) or "round-robin" (fixed addresses).
    router: str = "scheduler"
    # The nodes join a WireGuard mesh (needs netns): node-to-node traffic over overlay
    # addresses; the workload's client is no member and calls the nodes' own addresses.
    mesh: bool = False


@dataclass(frozen=True, slots=True)
class RunResult:
    summary: Summary
    files: tuple[Path, ...]
    notes: tuple[str, ...]


def _endpoints(cluster: Cluster) -> list[Endpoint]:
    return [Endpoint(h.grpc, frozenset(h.spec.models)) for h in cluster.history]


def _rows(cluster: Cluster) -> list[NodeRow]:
    rows = []
    for i, handle in enumerate(cluster.nodes):
        status = cluster.status(i)
        running = status in (NodeStatus.UP, NodeStatus.SLOW)
        rows.append(NodeRow(i, status.value, handle.pid if handle and running else None,
                            handle.grpc if handle else "", cluster.slowdown(i)))
    return rows


class _Timeline:
    """Applies the scenario's faults at their times; one task per fault."""

    def __init__(self, cluster: Cluster, scenario: Scenario, start: float, netns: bool,
                 models: PublishedModels | None = None) -> None:
        self.cluster = cluster
        self.models = models
        self.scenario = scenario
        self.start = start
        self.netns = netns
        self.events: list[FaultEvent] = []
        self.lines: list[str] = []

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self.start

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for fault in self.scenario.faults:
                tg.create_task(self._one(fault))

    async def _one(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.at - self._now()))
        began = self._now()
        try:
            outcome = await self._apply(fault)
        except SwarmError as exc:
            outcome = f"failed: {exc}"
        self.events.append(FaultEvent(fault.at, began if outcome == "applied" else None,
                                      fault.kind.value, fault.describe(), outcome))
        self.lines.append(f"{began:5.1f}s  {fault.describe()}: {outcome}"
                          + (f" (took {self._now() - began:.1f} s)" if outcome == "applied" else ""))
        if outcome == "applied" and fault.duration is not None:
            await asyncio.sleep(max(0.0, fault.at + fault.duration - self._now()))
            await self._undo(fault)
            self.lines.append(f"{self._now():5.1f}s  {fault.describe()}: over")

    async def _apply(self, fault: Fault) -> str:
        c = self.cluster
        node = fault.node if fault.node is not None else -1
        match fault.kind:
            case FaultKind.KILL:
                await c.kill(node)
            case FaultKind.LEAVE:
                await c.leave(node)
            case FaultKind.REJOIN:
                await c.rejoin(node)
            case FaultKind.SLOW:
                c.set_slowdown(node, fault.slowdown)
            case FaultKind.PARTITION:
                if not self.netns:
                    return "unsupported: partition needs --netns (loopback has one network)"
                await c.partition(node, True)
            case FaultKind.ROLLOUT | FaultKind.ROLLBACK:
                if self.models is None:
                    return "unsupported: the model is not served from the registry in this run"
                return await self.models.apply(fault)
        return "applied"

    async def _undo(self, fault: Fault) -> None:
        node = fault.node if fault.node is not None else -1
        if fault.kind is FaultKind.SLOW:
            self.cluster.set_slowdown(node, self.scenario.node_specs()[node].slowdown)
        elif fault.kind is FaultKind.PARTITION:
            await self.cluster.partition(node, False)


@contextlib.asynccontextmanager
async def _network(scenario: Scenario, options: RunOptions,
                   notes: list[str]) -> AsyncIterator[NetworkLayer | None]:
    if not options.netns:
        yield None
        return
    from swarm.simnet._netns import netns_network

    async with netns_network(scenario.node_count, scenario.network) as network:
        notes.append(f"--netns: one network namespace per node, on {network.subnet}")
        if options.mesh:
            notes.append("--mesh: the nodes reach each other over a WireGuard mesh (overlay "
                         "addresses); the workload's client calls their own addresses")
        notes.extend(network.notes)
        yield network


async def run_scenario(scenario: Scenario, options: RunOptions, *, stop: asyncio.Event | None = None,
                       started: asyncio.Event | None = None,
                       console: Console | None = None) -> RunResult:
    """Run the scenario end to end and write its report. Raises SwarmError if the swarm
    cannot start. Once every node serves, `started` is set; from then on setting `stop`
    ends the run early and returns a summary marked interrupted (before, cancel the call)."""
    console = console or Console(soft_wrap=True)
    stop = stop or asyncio.Event()
    report_dir = options.report_dir
    started_at = time.time()
    plan = plan_requests(scenario.workload, scenario.duration, random.Random(scenario.seed))
    chats = plan_chats(scenario.workload, scenario.duration,
                       random.Random(f"chat:{scenario.seed}"))
    inputs_rng = np.random.default_rng(scenario.seed)
    recorder = Recorder()
    title = f"simnet {scenario.name}"
    console.print(f"[bold]{title}[/]: {scenario.description or scenario.source}")
    chat_models = ", ".join(sorted({c.model for c in scenario.workload.chats}))
    console.print(f"  {scenario.node_count} nodes, {len(plan)} requests"
                  + (f" and {len(chats)} chats ({chat_models})" if scenario.workload.chats else "")
                  + f" over {scenario.duration:g} s, seed {scenario.seed}, report in {report_dir}")
    config = ClusterConfig(log_dir=report_dir / "logs", p2p=options.p2p,
                           advert_interval=scenario.advert_interval,
                           start_timeout=options.start_timeout, mesh=options.mesh,
                           autoscale=scenario.autoscale, staking=scenario.staking)
    autoscaling = any(spec.autoscale for spec in scenario.node_specs())
    replicas: list[ReplicaSample] = []
    scaled_model: tuple[str, Digest] | None = None
    interrupted = False
    ran = scenario.duration  # seconds of workload run
    timeline: _Timeline | None = None
    network_notes: list[str] = []
    reports: ReportLog | None = None
    findings: StakingFindings | None = None
    async with _network(scenario, options, network_notes) as network, \
            start_cluster(scenario.node_specs(), config, network=network) as cluster:
        for h in cluster.nodes:
            assert h is not None
            console.print(f"  node {h.index}  pid {h.pid}  grpc {h.grpc}  "
                          f"models {','.join(h.spec.models)}"
                          + (f"  slowdown x{h.spec.slowdown:g}" if h.spec.slowdown > 1 else "")
                          + (f"  p2p {h.p2p[0]}" if h.p2p else ""), highlight=False)
        cluster.notes[:0] = network_notes
        for note in cluster.notes:
            console.print(f"  [yellow]note[/]: {note}")
        router: RoundRobinRouter | SchedulerRouter
        p2p_addrs = [a for h in cluster.nodes if h is not None for a in h.p2p]
        if options.router == "scheduler" and p2p_addrs:
            staking = scenario.staking
            if staking is not None and cluster.ledger is not None:
                # Paying and verifying; no hedging, so that every receipt the client signs
                # reaches its provider and the claims can be checked to the unit.
                client = AsyncClient(bootstrap=p2p_addrs[:3], timeout=scenario.workload.timeout,
                                     hedge=False, wallet=cluster.ledger.wallet,
                                     deposit=staking.deposit,
                                     verify_fraction=staking.verify_fraction,
                                     rng=random.Random(scenario.seed))
            else:
                client = AsyncClient(bootstrap=p2p_addrs[:3], timeout=scenario.workload.timeout)
            router = SchedulerRouter(client)
            if not await router.start(len(cluster.nodes), options.start_timeout):
                cluster.notes.append("the client did not see every node before the workload")
            if cluster.ledger is not None:
                reports = ReportLog(cluster.ledger.genesis.chain, client.verifier.report)
                client.verifier.report = reports
        else:
            if options.router == "scheduler":
                cluster.notes.append("no peer-to-peer addresses: routing round-robin instead")
            router = RoundRobinRouter(lambda: _endpoints(cluster))
        index_of = {h.grpc: h.index for h in cluster.history}
        published = None
        if registry_refs(scenario):
            if not isinstance(router, SchedulerRouter) or cluster.nodes[0] is None:
                raise ConfigError("registry models need peer-to-peer and the scheduler router")
            expected = {ref.name: sum(1 for spec in scenario.node_specs()
                                      if str(ref) in spec.models)
                        for ref in registry_refs(scenario)}

            def served(name: str, digest: Digest) -> bool:
                holders = router.client.router.view.providers(digest)
                return len(holders) >= expected[name]

            console.print("simnet: publishing registry models", highlight=False)
            published = await publish_models(scenario, cluster.nodes[0].grpc,
                                             report_dir / "models", served, options.start_timeout)
            for name, versions in published.versions.items():
                for label, digest in versions.items():
                    console.print(f"  {name} {label} {digest.short}", highlight=False)
            if autoscaling:  # the workload's first registry model is the one that scales
                first = next(ref for ref in published.refs
                             if str(ref) in {m.name for m in scenario.workload.models})
                scaled_model = (str(first), published.versions[first.name]["v1"])

        def node_of(address: str) -> int | None:
            if address not in index_of:
                # Routed requests name the TLS address a node advertises, others its grpc one.
                index_of.update({a: h.index for h in cluster.history for a in (h.grpc, h.tls)
                                 if a})
            return index_of.get(address)

        def price_of(node: int, items: int) -> float | None:
            handle = cluster.nodes[node]
            return handle.price_of(items) if handle is not None else None

        loop = asyncio.get_running_loop()
        start = loop.time()
        start_wall = time.time()
        recorder.started_at = start
        if reports is not None:
            reports.start = start
        timeline = _Timeline(cluster, scenario, start, options.netns, published)
        view = LiveView(console, title=title, duration=scenario.duration, recorder=recorder,
                        nodes=lambda: _rows(cluster),
                        events=lambda: [*cluster.notes, *timeline.lines],
                        live=options.live)
        console.print("simnet: workload started", highlight=False)
        if started is not None:
            started.set()
        try:
            async with asyncio.TaskGroup() as tg:
                async def workload() -> None:
                    async with asyncio.TaskGroup() as both:
                        if chats:
                            both.create_task(drive_chats(chats, scenario.workload, router,
                                                         recorder, node_of=node_of, start=start))
                        await drive(plan, scenario.workload, router, recorder, rng=inputs_rng,
                                    node_of=node_of, price_of=price_of, start=start)
                    if autoscaling:  # a quiet tail (rate 0) is part of the run: the cool-down
                        await asyncio.sleep(max(0.0, start + scenario.duration - loop.time()))

                driving = tg.create_task(workload(), name="workload")
                stopping = tg.create_task(stop.wait(), name="stop")
                others = [tg.create_task(timeline.run(), name="faults"),
                          tg.create_task(view.run(), name="live view")]
                if scaled_model is not None and isinstance(router, SchedulerRouter):
                    routed, digest = router.client.router, scaled_model[1]
                    others.append(tg.create_task(sample_replicas(
                        lambda: sum(not e.advert.draining
                                    for e in routed.view.providers(digest)),
                        start, replicas), name="replicas"))
                await asyncio.wait({driving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                interrupted = not driving.done()
                # Rates are over the time the workload actually ran (all of it, unless stopped).
                ran = min(scenario.duration, loop.time() - start) if interrupted \
                    else scenario.duration
                for task in (driving, stopping, *others):
                    task.cancel()
            if cluster.ledger is not None and scenario.staking is not None and \
                    isinstance(router, SchedulerRouter):
                console.print("simnet: reading the ledgers", highlight=False)
                findings = await check_staking(
                    cluster.ledger, {h.index: h.grpc for h in cluster.nodes if h is not None},
                    [s.index for s in scenario.node_specs() if s.perturb_outputs > 0],
                    router.client.owed, reports or ReportLog(b"", None),
                    settle=3 * scenario.staking.epoch_seconds + 10)
        finally:
            await router.aclose()
        history = cluster.history
        notes = [*cluster.notes, *timeline.lines]
        events, serving = (await collect_events(
            [(h.index, h.grpc) for h in cluster.nodes if h is not None], start_wall,
            str(scaled_model[1])) if scaled_model is not None else ([], 0))
    summary = summarize(recorder.records, duration=ran, promises=scenario.promises,
                        faults=timeline.events, interrupted=interrupted, chats=recorder.chats)
    if findings is not None:
        honest = sum(1 for s in scenario.node_specs() if s.perturb_outputs == 0)
        summary = dataclasses.replace(summary, promises=summary.promises + staking_promises(
            scenario.promises, findings, recorder.records, honest))
        notes += staking_lines(findings)
        for line in staking_lines(findings):
            console.print(line, highlight=False)
    if scaled_model is not None:
        scaling = summarize_autoscale(scaled_model[0], scenario.workload, ran,
                                      scenario.promises, replicas, events, recorder.records,
                                      final=serving)
        summary = dataclasses.replace(
            summary, promises=summary.promises + autoscale_promises(scenario.promises, scaling))
        notes += autoscale_lines(scaling)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "autoscale.json").write_text(json.dumps(
            dataclasses.asdict(scaling), indent=1, default=str) + "\n")
        for line in autoscale_lines(scaling)[:3]:
            console.print(line, highlight=False)
    console.print(render_summary(summary, title=title, faults=timeline.events))
    files = write_report(report_dir, title=title, scenario=scenario, summary=summary,
                         records=recorder.records, faults=timeline.events, nodes=history,
                         notes=notes, started_at=started_at, chats=recorder.chats)
    console.print(f"report: {report_dir}", highlight=False)
    return RunResult(summary, tuple(files), tuple(notes))

