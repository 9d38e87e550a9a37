"""`swarm simnet virtual`: a whole swarm in one process, in virtual time.

What runs for real, what is simulated:

real       `Membership` in every provider (signed adverts from the provider's live
           state, published periodically and on significant change) and in every
           client (validators, rate limits, PeerView admit/expire); the gossip
           transport (`MemoryNetwork` with topic meshes); in every client the
           production `swarm.routing.Router` (`swarm.scheduler.choose`, attempts within
           the deadline, retries, hedging, `Observations` with their EWMAs and circuit
           breaker); in every provider the node's batching policy `swarm.node.decide`.
simulated  the call under the Router (swarm/simnet/_virtual_provider.py: `Wire`) and
           the model server behind it: per model a bounded queue batched by `decide`,
           a batch of n items taking (base + per_item * n) x the provider's slowness;
           one-way network latency (swarm/simnet/_latency.py: lognormal per pair of
           peers; requests jittered per message and never lost, gossip hops at the
           pair's latency and optionally lossy); the workload (open loop, the
           scenario's shape and model mix, spread over the clients; model names
           resolve with the production resolver, `SignedNames`, over the simulator's
           own pinned table: the simulator owns the names of its swarm, as a release
           owns `builtin/`); the fault timeline (kill = process crash:
           connections reset; partition = silence; leave = drain then go; rejoin; slow).

One VirtualTimeLoop and its VirtualClock are the only time; every draw comes from
RNGs seeded from the scenario's seed, so a seed gives the same run, in any process.
A change to routing or batching in production changes what this simulates.
Groups with `autoscale = true` run the node's autoscaling driver and the production
`swarm.autoscale.decide` (swarm/simnet/_virtual_autoscale.py says what is simulated).

Defaults (`VirtualSettings`, and `default_virtual_scenario`) for a swarm of thousands
of providers, as the real system would be configured there (ARCHITECTURE.md, Scale
notes; shared/notes/libp2p.md: ~1.7 ms of CPU per gossip message sent or received):

- Providers publish adverts and subscribe to none: they route nothing, so they
  need no view of each other. With topic meshes only the clients form the advert
  mesh; a provider's advert costs `degree` (6) fanout transmissions plus ~5 relays
  per client, instead of a flood through every host (O(N^2) at N = 2,000).
- Adverts every 60 s (TTL 150 s), and on significant change (checked every 5 s, at
  most one per 5 s). Every client hears N/T adverts/s and relays each to its mesh:
  at T = 30 s that is ~700 messages/s per client (measured here), more than a core
  of py-libp2p, and over GossipSub's default 10 msg/s per forwarding peer; at 60 s
  ~350/s. Crashed providers are noticed by clients from their failures within a
  request (reset connections, circuit breaker), not from expiry; beyond ~2,000
  providers adverts must split by model topic (Scale notes).
- 50 clients (SDK processes or gateways), each with its own view and Router; each
  request goes to a random client.
- `max_considered` 16: each request estimates 16 providers (up to 8 that answered
  recently, the rest sampled at random: power of d choices) instead of 2,000
  (0.16 ms instead of 14 ms per choice).
- The workload: 0.1 requests/s per provider (200/s at 2,000) of a generation-sized
  model (0.75 s + 0.4 s per item at the fastest provider, a 4x spread): providers
  work at ~10-40% of capacity, so queueing and speed differences matter, while the
  number of simulated requests stays bounded.
- Batching as the node's defaults: at most 8 items, 64 waiting, 2 ms max queue delay.

    swarm simnet virtual --nodes 2000 --duration 600

A scenario file configures it further (`[virtual]` is VirtualSettings; `fraction`
picks a share of the nodes at random when the fault happens):

    [nodes]
    advert_interval = 60
    [[nodes.group]]
    count = 1500
    models = ["org/chat"]
    price_per_request = 10
    [[nodes.group]]
    count = 500
    models = ["org/chat"]
    price_per_request = 40
    slowdown = 2                         # on top of the speed spread
    [workload]
    rate = 200
    timeout = 30
    [[workload.model]]
    name = "org/chat"
    inputs = "text"
    [[fault]]
    at = 120
    kind = "kill"
    fraction = 0.1
    [virtual]
    clients = 50
    latency_ms = 30
    max_price = 20
    hedge = true
    max_queue_delay_ms = 50
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm._errors import SwarmError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._types import Digest
from swarm.autoscale import AutoscaleConfig
from swarm.node import Autoscaler
from swarm.protocol import Identity, Membership, MembershipConfig
from swarm.protocol.testing import MemoryNetwork
from swarm.routing import Router, RoutingOptions, SignedNames
from swarm.scheduler import AdmissionPolicy, Preference, SchedulerConfig
from swarm.simnet._autoscale import (
    AutoscaleSummary,
    ReplicaSample,
    ScalingRecord,
    autoscale_lines,
    autoscale_promises,
    summarize_autoscale,
)
from swarm.simnet._latency import Latency, gossip_route
from swarm.simnet._report import (
    FaultEvent,
    Summary,
    _jsonable,
    plot_served_by_speed,
    summarize,
    write_report_folder,
)
from swarm.simnet._scenario import (
    Fault,
    FaultKind,
    ModelMix,
    NodeGroup,
    PlannedRequest,
    Promises,
    Scenario,
    Workload,
    plan_requests,
)
from swarm.simnet._virtual_autoscale import VirtualHost, replicas_of, sample_every
from swarm.simnet._virtual_provider import ProviderContext, VirtualProvider, Wire, batch_policy
from swarm.simnet._virtual_stats import VirtualStats, load_spread
from swarm.simnet._vloop import VirtualClock, VirtualTimeLoop, run_virtual
from swarm.simnet._workload import CANCELLED, OK, SHED, RequestRecord, outcome_of

__all__ = [
    "DEFAULT_ADVERT_INTERVAL",
    "VirtualResult",
    "default_virtual_scenario",
    "run_virtual_swarm",
    "write_virtual_report",
]

# Seconds between a provider's adverts when the scenario does not say (nodes.advert_interval).
DEFAULT_ADVERT_INTERVAL = 60.0
# Requests per second per provider in the default workload.
DEFAULT_RATE_PER_PROVIDER = 0.1

# A client forgets what it observed of a provider it has not used for this long (and
# whose breaker is closed): bounded memory, and the scheduler's scan of recently used
# providers stays short.
_FORGET_AFTER = 60.0
# Virtual seconds between samples of the clients' views, and between progress lines.
_SAMPLE_EVERY = 10.0
_PROGRESS_EVERY = 60.0


def default_virtual_scenario(nodes: int = 200, *, duration: float = 120.0,
                             seed: int = 0) -> Scenario:
    """The swarm `swarm simnet virtual` runs without --scenario (module docstring)."""
    models = (ModelMix("org/chat", weight=3.0, inputs="text"),
              ModelMix("org/code", weight=1.0, inputs="text"))
    return Scenario(
        name="virtual",
        description=f"{nodes} providers, 0.1 requests/s each, no faults",
        duration=duration, seed=seed,
        groups=(NodeGroup(count=nodes, models=("org/chat", "org/code"), price_per_request=10),),
        node_count=nodes,
        workload=Workload(rate=DEFAULT_RATE_PER_PROVIDER * nodes, models=models, timeout=30.0),
        promises=Promises(max_lost_requests=0),
        advert_interval=DEFAULT_ADVERT_INTERVAL,
        source="builtin:virtual")


@dataclass(frozen=True, slots=True)
class VirtualResult:
    """Everything a virtual run produced: `summary` (as `simnet up`'s), `stats`, raw data."""

    scenario: Scenario
    summary: Summary
    stats: VirtualStats
    records: tuple[RequestRecord, ...]
    faults: tuple[FaultEvent, ...]
    # Per provider: index, group, slowness, requests answered, price per request.
    providers: tuple[dict[str, Any], ...]
    # (virtual seconds from the workload's start, mean view completeness, stale entries).
    views: tuple[tuple[float, float, int], ...]
    # Groups that autoscale: replicas over time and every scaling action (else None).
    autoscale: AutoscaleSummary | None = None


def _identity(seed: int, role: str, index: int) -> Identity:
    return Identity.from_seed(
        hashlib.sha256(f"simnet-virtual:{seed}:{role}:{index}".encode()).digest())


def _request_of(mix: ModelMix, digest: Digest, items: int) -> pb.ModelInferRequest:
    """The OIP request a client sends for `mix`: its shape only, since simulated compute
    reads no values. One per model, shared by every request (the Router never changes it)."""
    shape = [items] if mix.inputs == "text" else [items, mix.dim]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="BYTES" if mix.inputs == "text" else "FP32", shape=shape)
    return pb.ModelInferRequest(model_name=mix.name, model_version=str(digest),
                                inputs=[tensor])


class _Client:
    """A light peer: real Membership (listen-only) and the real Router over the Wire."""

    def __init__(self, swarm: _Swarm, index: int) -> None:
        self.swarm = swarm
        self.index = index
        self.peer_id = _identity(swarm.seed, "client", index).peer_id
        self.host = swarm.network.join(self.peer_id)
        membership = self.membership = Membership(
            self.host, clock=swarm.clock, rng=random.Random(swarm.rng.getrandbits(64)),
            config=swarm.client_config)
        self.router = Router(lambda: membership.view, rng=random.Random(swarm.rng.getrandbits(64)),
                             config=swarm.scheduler_config, clock=swarm.clock,
                             resolver=SignedNames(pinned=swarm.digest_of),
                             caller=swarm.wire.caller(self.peer_id, swarm.node_of_client(index)))
        self.in_flight = 0
        self.converged_at: float | None = None

    async def converge(self, providers: int, timeout: float) -> None:
        """Note when this client's view first holds `providers` providers."""
        if await self.membership.wait_until(lambda v: len(v) >= providers, timeout):
            self.converged_at = self.swarm.loop.time()

    def forget_idle(self, now: float) -> None:
        obs = self.router.observations
        for peer, s in list(obs.snapshot().peers.items()):
            if s.in_flight or s.opened:
                continue
            last = max(s.surprise_at, s.failure_times[-1] if s.failure_times else -math.inf)
            if now - last > _FORGET_AFTER:
                obs.forget(peer)

    async def send(self, req: PlannedRequest) -> RequestRecord:
        """Route one planned request with the Router; its record."""
        sw = self.swarm
        items = sw.workload.items
        latency_from = sw.t0 + req.at  # latency counts from the scheduled send time
        self.in_flight += 1
        try:
            routed = await self.router.send(sw.requests[req.model], self.router.resolve(req.model),
                                            items, sw.options)
        except SwarmError as exc:
            return RequestRecord(req.index, req.model, items, req.at, req.at,
                                 sw.loop.time() - latency_from, outcome_of(exc))
        finally:
            self.in_flight -= 1
        return RequestRecord(req.index, req.model, items, req.at, req.at,
                             sw.loop.time() - latency_from, OK,
                             sw.wire.providers[routed.peer].index, routed.attempts, routed.price)


class _Swarm:
    """Everything of one run; `run()` is the whole simulation (on a VirtualTimeLoop)."""

    def __init__(self, scenario: Scenario, progress: Callable[[str], None] | None) -> None:
        self.scenario = scenario
        self.settings = s = scenario.virtual
        self.workload = scenario.workload
        self.seed = scenario.seed
        self.progress = progress
        self.rng = random.Random(f"simnet-virtual:{scenario.seed}")
        interval = scenario.advert_interval or DEFAULT_ADVERT_INTERVAL
        # Short advert intervals (tests, small swarms) are checked often enough to keep them.
        # Providers only publish (they route nothing): they stay out of the advert mesh.
        self.provider_config = MembershipConfig(
            advert_interval=interval, check_interval=min(s.check_interval, interval / 5),
            min_interval=min(s.min_interval, interval / 2), listen=False)
        self.client_config = MembershipConfig(check_interval=1.0)
        self.scheduler_config = SchedulerConfig(max_considered=s.max_considered or None,
                                                explore=s.explore, max_refusals=s.max_refusals)
        self.options = RoutingOptions(max_price=s.max_price,
                                      preference=Preference.parse(s.preference),
                                      timeout=self.workload.timeout, hedge=s.hedge,
                                      max_attempts=s.max_attempts)
        self.specs = scenario.node_specs()
        names = sorted({name for spec in self.specs for name in spec.models})
        self.digest_of = {name: Digest.of(f"simnet-virtual:{name}".encode()) for name in names}
        self.requests = {m.name: _request_of(m, self.digest_of[m.name], self.workload.items)
                         for m in self.workload.models}
        self.records: list[RequestRecord] = []
        self.fault_events: list[FaultEvent] = []
        self.views: list[tuple[float, float, int]] = []
        self.min_complete = 1.0
        self.t0 = s.warmup
        self.last_join = 0.0
        self.providers: list[VirtualProvider] = []
        self.clients: list[_Client] = []
        # Autoscaling: the node's driver per provider of a group that autoscales.
        self.autoscale = (AutoscaleConfig(**{**dict(scenario.autoscale), "enabled": True})
                          if any(spec.autoscale for spec in self.specs) else None)
        self.autoscalers: dict[int, Autoscaler] = {}
        self._autoscaling: list[asyncio.Task[None]] = []
        self.replicas: list[ReplicaSample] = []

    def node_of_client(self, index: int) -> int:
        """A client's index among all peers (providers first), for latencies."""
        return len(self.specs) + index

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self.tg.create_task(coro, name=name)

    async def run(self) -> tuple[float, int]:
        """Simulate; returns (virtual seconds, loop callbacks)."""
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        self.loop = loop
        self.clock = VirtualClock(loop)
        s = self.settings
        self.network = MemoryNetwork(self.rng.getrandbits(64), degree=s.degree,
                                     default_latency=0.0, topic_meshes=True,
                                     overhead_bytes=120)
        latency = Latency(random.Random(self.rng.getrandbits(64)), s.latency_ms / 1000,
                          s.latency_sigma, s.jitter)
        self.wire = Wire(loop, self.network, latency, random.Random(self.rng.getrandbits(64)))
        context = ProviderContext(
            loop=loop, clock=self.clock, network=self.network, wire=self.wire, settings=s,
            policy=batch_policy(s), membership=self.provider_config, spawn=self._spawn,
            names={d: name for name, d in self.digest_of.items()},
            autoscale=self.autoscale is not None,
            demand_window=self.provider_config.advert_interval,
            admission=AdmissionPolicy(s.admission_wait))
        # Node i belongs to the group that Scenario.node_specs gave it.
        group_of = [i for i, g in enumerate(self.scenario.groups) for _ in range(g.count)]
        spread = math.log(s.speed_spread)
        for spec in self.specs:
            slowness = math.exp(self.rng.random() * spread) * spec.slowdown
            self.providers.append(VirtualProvider(
                context, spec.index, spec, group_of[spec.index % len(group_of)], slowness,
                _identity(self.seed, "provider", spec.index),
                random.Random(self.rng.getrandbits(64))))
        self.wire.providers.update((p.peer_id, p) for p in self.providers)
        self.clients = [_Client(self, i) for i in range(s.clients)]
        index_of = {p.peer_id: p.index for p in self.providers}
        index_of.update({c.peer_id: self.node_of_client(c.index) for c in self.clients})
        self.network.set_route(gossip_route(latency, index_of, s.loss))
        plan = plan_requests(self.workload, self.scenario.duration,
                             random.Random(self.rng.getrandbits(64)))
        joins = sorted((self.rng.random() * s.join_window, p.index) for p in self.providers)
        self.last_join = joins[-1][0] if joins else 0.0
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            background = [tg.create_task(c.membership.run(), name=f"client-{c.index}")
                          for c in self.clients]
            background += [tg.create_task(c.converge(len(self.providers),
                                                     self.t0 + self.scenario.duration))
                           for c in self.clients]
            background.append(tg.create_task(self._join(joins)))
            background.append(tg.create_task(self._faults()))
            background.append(tg.create_task(self._housekeeping()))
            if self.autoscale is not None:
                digest = self.digest_of[self.workload.models[0].name]
                background.append(tg.create_task(sample_every(1.0, lambda: self.replicas.append(
                    ReplicaSample(round(loop.time() - self.t0, 2),
                                  replicas_of(self.providers, digest))))))
            await self._drive(plan, random.Random(self.rng.getrandbits(64)))
            if self.progress is not None:  # the last line counts what the summary counts
                self.progress(self._progress_line(loop.time()) + "  (workload done)")
            for task in background:
                task.cancel()
            for p in self.providers:
                if p.task is not None:
                    p.task.cancel()
            for task in self._autoscaling:
                task.cancel()
        return loop.time(), loop.callbacks

    # ------------------------------------------------------------------ requests

    async def _drive(self, plan: Sequence[PlannedRequest], rng: random.Random) -> None:
        loop = self.loop
        t0, clients = self.t0, self.clients
        limit = self.workload.max_in_flight
        items = self.workload.items

        async def one(client: _Client, req: PlannedRequest) -> None:
            try:
                self.records.append(await client.send(req))
            except asyncio.CancelledError:
                self.records.append(RequestRecord(
                    req.index, req.model, items, req.at, req.at, loop.time() - t0 - req.at,
                    CANCELLED))
                raise

        async with asyncio.TaskGroup() as tg:
            for req in plan:
                delay = t0 + req.at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                client = clients[rng.randrange(len(clients))]
                if client.in_flight >= limit:
                    self.records.append(RequestRecord(req.index, req.model, items, req.at,
                                                      None, None, SHED))
                    continue
                tg.create_task(one(client, req))
            end = t0 + self.scenario.duration  # the swarm lives on until the workload ends
            if end > loop.time():
                await asyncio.sleep(end - loop.time())

    # ------------------------------------------------------------------ providers

    async def _join(self, joins: list[tuple[float, int]]) -> None:
        for at, index in joins:
            if at > self.loop.time():
                await asyncio.sleep(at - self.loop.time())
            self.providers[index].start()
            if self.autoscale is not None and self.specs[index].autoscale:
                self._start_autoscaler(self.providers[index])

    def _start_autoscaler(self, p: VirtualProvider) -> None:
        """The node's driver on this provider, over the view of a client near it."""
        assert self.autoscale is not None
        if p.index in self.autoscalers:
            return
        client = self.clients[p.index % len(self.clients)]
        host = VirtualHost(p, lambda: client.membership.view, self.clock,
                           load_seconds=self.settings.model_load_s, linger=5.0)
        scaler = Autoscaler(host, self.autoscale, clock=self.clock,
                            rng=random.Random(self.rng.getrandbits(64)))
        self.autoscalers[p.index] = scaler
        self._autoscaling.append(self.tg.create_task(scaler.run(), name=f"autoscale-{p.index}"))

    def scaling_records(self) -> list[ScalingRecord]:
        """Every provider's scaling events, timed from the workload's start."""
        offset = self.clock.time() - self.loop.time() + self.t0
        return [ScalingRecord(round(e.at - offset, 2), index, e.action.value, e.outcome,
                              e.reason, e.error)
                for index, scaler in self.autoscalers.items() for e in scaler.events]

    async def _faults(self) -> None:
        loop = self.loop
        for fault in sorted(self.scenario.faults, key=lambda f: f.at):
            due = self.t0 + fault.at
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            outcome = await self._apply(fault)
            self.fault_events.append(FaultEvent(
                at=fault.at, applied_at=loop.time() - self.t0 if outcome == "applied" else None,
                kind=fault.kind.value, description=fault.describe(), outcome=outcome))
            if self.progress is not None:
                self.progress(f"t={fault.at:g}s {fault.describe()}: {outcome}")

    def _targets(self, fault: Fault, states: tuple[str, ...]) -> list[VirtualProvider]:
        if fault.node is not None:
            p = self.providers[fault.node]
            return [p] if p.state in states else []
        assert fault.fraction is not None
        pool = [p for p in self.providers if p.state in states]
        count = min(len(pool), max(1, round(fault.fraction * len(self.providers))))
        return sorted(self.rng.sample(pool, count), key=lambda p: p.index)

    async def _apply(self, fault: Fault) -> str:
        kind = fault.kind
        if kind in (FaultKind.ROLLOUT, FaultKind.ROLLBACK):
            return "unsupported: the simulator has no registry yet"
        if kind is FaultKind.REJOIN:
            targets = self._targets(fault, (VirtualProvider.DOWN,))
        else:
            targets = self._targets(fault, (VirtualProvider.UP,))
        if not targets:
            return "not applied: no node in the required state"
        if kind is FaultKind.KILL:
            for p in targets:
                p.kill()
        elif kind is FaultKind.LEAVE:
            for p in targets:
                await p.leave()
        elif kind is FaultKind.REJOIN:
            for p in targets:
                p.start()
        elif kind is FaultKind.SLOW:
            for p in targets:
                p.slowdown = fault.slowdown
            if fault.duration is not None:
                self.loop.call_later(fault.duration, self._unslow, targets, fault.slowdown)
        elif kind is FaultKind.PARTITION:
            self.network.partition([[p.peer_id for p in targets]])
            if fault.duration is not None:
                self.loop.call_later(fault.duration, self.network.heal)
        return "applied"

    @staticmethod
    def _unslow(targets: list[VirtualProvider], slowdown: float) -> None:
        for p in targets:
            if p.slowdown == slowdown:
                p.slowdown = 1.0

    # ------------------------------------------------------------------ observation

    async def _housekeeping(self) -> None:
        loop = self.loop
        next_progress = self.t0 + _PROGRESS_EVERY
        next_forget = _FORGET_AFTER
        while True:
            await asyncio.sleep(_SAMPLE_EVERY)
            now = loop.time()
            down = [p.peer_id for p in self.providers if p.state is VirtualProvider.DOWN]
            up = len(self.providers) - len(down)
            if up and now >= self.t0:
                # Only providers publish adverts: a view's entries are the live providers
                # it knows and the down ones it has not expired yet.
                complete, stale = [], 0
                for c in self.clients:
                    entries = c.membership.view.entries
                    gone = sum(1 for peer in down if peer in entries)
                    complete.append((len(entries) - gone) / up)
                    stale = max(stale, gone)
                self.views.append((now - self.t0, sum(complete) / len(complete), stale))
                self.min_complete = min(self.min_complete, *complete)
            if now >= next_forget:
                next_forget = now + _FORGET_AFTER / 4
                for c in self.clients:
                    c.forget_idle(now)
            if self.progress is not None and now >= next_progress:
                next_progress += _PROGRESS_EVERY
                self.progress(self._progress_line(now))

    def _progress_line(self, now: float) -> str:
        """Counted as the summary counts: sent = answered, failed or shed so far + in flight."""
        records = self.records
        ok = sum(1 for r in records if r.ok)
        in_flight = sum(c.in_flight for c in self.clients)
        up = sum(1 for p in self.providers if p.state is VirtualProvider.UP)
        hedges = sum(c.router.hedges for c in self.clients)
        return (f"t={now - self.t0:5.0f}s  requests {len(records) + in_flight} sent, {ok} ok, "
                f"{len(records) - ok} lost, {in_flight} in flight ({hedges} hedges)  "
                f"providers up {up}/{len(self.providers)}  cpu {time.process_time():.0f}s")

    # ------------------------------------------------------------------ results

    def stats(self, virtual: float, events: int, wall: float, cpu: float) -> VirtualStats:
        providers, clients = self.providers, self.clients
        for p in providers:  # fold the live hosts' counters in
            if p.host is not None:
                p.stop_gossip()
        converged = [c.converged_at for c in clients]
        convergence = (None if any(t is None for t in converged)
                       else max(t for t in converged if t is not None) - self.last_join)
        span = max(virtual, 1e-9)
        p_msgs = sum(m for p in providers for m, _ in p.gossip)
        p_bytes = sum(b for p in providers for _, b in p.gossip)
        c_stats = [c.host.stats() for c in clients]
        c_msgs = sum(s.messages_sent + s.messages_received for s in c_stats)
        c_bytes = sum(s.bytes_sent + s.bytes_received for s in c_stats)
        counts = Counter(r.node for r in self.records if r.ok and r.node is not None)
        load = load_spread([counts.get(p.index, 0) for p in providers],
                           [p.slowness for p in providers])
        batches: Counter[int] = Counter()
        for p in providers:
            batches.update(p.batch_sizes)
        return VirtualStats(
            providers=len(providers), clients=len(clients), virtual_s=virtual, wall_s=wall,
            cpu_s=cpu, events=events, events_per_wall_s=events / wall if wall > 0 else 0.0,
            convergence_s=convergence, adverts=sum(p.published for p in providers),
            provider_msgs_per_s=p_msgs / len(providers) / span,
            provider_bytes_per_s=p_bytes / len(providers) / span,
            client_msgs_per_s=c_msgs / len(clients) / span,
            client_bytes_per_s=c_bytes / len(clients) / span,
            load=load, min_view_completeness=self.min_complete,
            max_stale_entries=max((stale for _, _, stale in self.views), default=0),
            hedges=sum(c.router.hedges for c in clients), batch_sizes=dict(sorted(batches.items())),
            explorations=sum(c.router.explorations for c in clients),
            refusals=sum(c.router.refusals for c in clients))


def run_virtual_swarm(scenario: Scenario, *,
                      progress: Callable[[str], None] | None = None) -> VirtualResult:
    """Simulate `scenario` in virtual time (module docstring); deterministic for its seed.

    `progress` receives a line every simulated minute and one per fault.
    """
    swarm = _Swarm(scenario, progress)
    wall, cpu = time.perf_counter(), time.process_time()
    # The run allocates millions of short-lived objects over a large live heap: the
    # default thresholds make the cyclic GC rescan that heap all the time (a third of
    # the run's CPU at 2,000 providers). Collect rarely, then restore.
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        virtual, events = run_virtual(swarm.run())
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    records = tuple(sorted(swarm.records, key=lambda r: r.index))
    summary = summarize(records, duration=scenario.duration, promises=scenario.promises,
                        faults=swarm.fault_events)
    providers = tuple({"index": p.index, "group": p.group, "slowness": round(p.slowness, 3),
                       "served": summary.node_requests.get(p.index, 0),
                       "price_per_request": p.price.per_request_micros}
                      for p in swarm.providers)
    scaling = None
    if swarm.autoscale is not None:
        scaling = summarize_autoscale(scenario.workload.models[0].name, scenario.workload,
                                      scenario.duration, scenario.promises, swarm.replicas,
                                      swarm.scaling_records(), records)
        summary = dataclasses.replace(
            summary, promises=summary.promises + autoscale_promises(scenario.promises, scaling))
    return VirtualResult(scenario=scenario, summary=summary,
                         stats=swarm.stats(virtual, events, wall, cpu), records=records,
                         faults=tuple(swarm.fault_events), providers=providers,
                         views=tuple(swarm.views), autoscale=scaling)


def write_virtual_report(folder: Path, result: VirtualResult, *, title: str,
                         plot_sample: int = 5000) -> list[Path]:
    """Write report.json, summary.md, latency.png (a sample of the requests) and load.png
    (requests per provider, by speed); return their paths."""
    st = result.stats
    notes = [f"virtual time, {st.providers} providers, {st.clients} clients: {st.virtual_s:.0f} "
             f"virtual s in {st.wall_s:.1f} wall s ({st.cpu_s:.1f} CPU s), "
             f"{st.events_per_wall_s:,.0f} events/s",
             f"load spread: Gini {st.load.gini:.2f}, max/mean {st.load.max_over_mean:.1f}, "
             f"fastest quarter {st.load.fastest_quarter:.0%}, slowest quarter "
             f"{st.load.slowest_quarter:.0%}",
             f"routing: {st.hedges} hedges, {st.explorations} explorations, {st.refusals} "
             f"admission refusals; batching: "
             f"{st.mean_batch:.2f} items per batch"]
    if result.autoscale is not None:
        notes += autoscale_lines(result.autoscale)
    if result.scenario.workload.chats:
        notes.append("chat traffic ([[workload.chat]]) is not simulated in virtual time: "
                     "only the requests are")
    extra = {
        "virtual": _jsonable(st),
        "providers": list(result.providers),
        "views": [{"t": t, "completeness": c, "stale": s} for t, c, s in result.views],
    }

    def load(path: Path) -> None:
        plot_served_by_speed(path, result.providers, title=f"{title}: requests per provider")

    # Compact JSON: a long run records 100,000s of requests.
    return write_report_folder(folder, title=title, scenario=result.scenario,
                               summary=result.summary, records=result.records,
                               faults=result.faults, notes=notes, extra=extra, plot_load=load,
                               indent=None, plot_sample=plot_sample)
