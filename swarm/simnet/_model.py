"""`swarm simnet model`: a whole swarm in one process, in virtual time.

What runs for real, what is simulated:

real       `Membership` in every provider (signed adverts from the provider's live
           state, published periodically and on significant change) and in every
           client (validators, rate limits, PeerView admit/expire); the gossip
           transport (`MemoryNetwork` with topic meshes); `swarm.scheduler.choose` and
           `Observations` (EWMAs, circuit breaker) in every client, driven as
           swarm/client/_router.py drives them: candidates, the attempt's deadline,
           a hedge after the provider's p95, retries on retryable errors.
simulated  inference at the providers: per model a FIFO queue (bounded) with dynamic
           batching, a batch of n items taking (base + per_item * n) x the provider's
           slowness; one-way network latency (lognormal per pair of peers; requests
           jittered per message and never lost, gossip hops at the pair's latency and
           optionally lossy); the workload (open loop, the scenario's shape and model
           mix, spread over the clients; a model name maps straight to its digest);
           the fault timeline (kill = process crash: connections reset; partition =
           silence; leave = drain then go; rejoin; slow).

One VirtualTimeLoop and its VirtualClock are the only time; every draw comes from
RNGs seeded from the scenario's seed, so a seed gives the same run, in any process.

Defaults (`ModelSettings`, and `default_model_scenario`) for a swarm of thousands of
providers, as the real system would be configured there (ARCHITECTURE.md, Scale notes;
shared/notes/libp2p.md: ~1.7 ms of CPU per gossip message sent or received):

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
- 50 clients (SDK processes or gateways), each with its own view, observations and
  scheduler; each request goes to a random client.
- `max_considered` 16: each request estimates 16 providers (up to 8 that answered
  recently, the rest sampled at random: power of d choices) instead of 2,000
  (0.16 ms instead of 14 ms per choice).
- The workload: 0.1 requests/s per provider (200/s at 2,000) of a generation-sized
  model (0.75 s + 0.4 s per item at the fastest provider, a 4x spread): providers
  work at ~10-40% of capacity, so queueing and speed differences matter, while the
  number of simulated requests (~0.4 ms of CPU each) stays bounded.

    swarm simnet model --nodes 2000 --duration 600

A scenario file configures it further (`[model]` is ModelSettings; `fraction` picks
a share of the nodes at random when the fault happens):

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
    [model]
    clients = 50
    latency_ms = 30
    max_price = 20
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm import __version__
from swarm._errors import NoProviderError
from swarm._types import Digest, PeerId
from swarm.protocol import (
    Advert,
    GossipMessage,
    Hardware,
    Identity,
    Membership,
    MembershipConfig,
    ModelOffer,
    Price,
)
from swarm.protocol.testing import MemoryGossip, MemoryNetwork, RouteDecision
from swarm.scheduler import (
    Candidate,
    Failure,
    Observations,
    Preference,
    Request,
    SchedulerConfig,
    choose,
)
from swarm.simnet._report import (
    FaultEvent,
    Summary,
    _jsonable,
    plot_latency,
    summarize,
    summary_markdown,
)
from swarm.simnet._scenario import (
    Fault,
    FaultKind,
    ModelMix,
    NodeGroup,
    NodeSpec,
    PlannedRequest,
    Promises,
    Scenario,
    Workload,
    plan_requests,
)
from swarm.simnet._vloop import VirtualClock, VirtualTimeLoop, run_virtual
from swarm.simnet._workload import CANCELLED, OK, SHED, RequestRecord

__all__ = [
    "DEFAULT_ADVERT_INTERVAL",
    "LoadSpread",
    "ModelResult",
    "ModelStats",
    "default_model_scenario",
    "gini",
    "load_spread",
    "run_model",
    "write_model_report",
]

# Seconds between a provider's adverts when the scenario does not say (nodes.advert_interval).
DEFAULT_ADVERT_INTERVAL = 60.0
# Requests per second per provider in the default workload.
DEFAULT_RATE_PER_PROVIDER = 0.1

# What swarm/client/_router.py retries on the next candidate (its _RETRYABLE).
_RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "NOT_FOUND", "INTERNAL",
                        "CANCELLED", "UNKNOWN"})
_OK = "OK"
# A client forgets what it observed of a provider it has not used for this long (and
# whose breaker is closed): bounded memory, and the scheduler's scan of recently used
# providers stays short.
_FORGET_AFTER = 60.0
# Virtual seconds between samples of the clients' views, and between progress lines.
_SAMPLE_EVERY = 10.0
_PROGRESS_EVERY = 60.0
_HARDWARE = Hardware("gpu", 1, 24 << 30, "simulated")
_DROP = RouteDecision(drop=True)


def default_model_scenario(nodes: int = 200, *, duration: float = 120.0, seed: int = 0) -> Scenario:
    """The swarm `swarm simnet model` runs without --scenario (module docstring)."""
    models = (ModelMix("org/chat", weight=3.0, inputs="text"),
              ModelMix("org/code", weight=1.0, inputs="text"))
    return Scenario(
        name="model",
        description=f"{nodes} providers, 0.1 requests/s each, no faults",
        duration=duration, seed=seed,
        groups=(NodeGroup(count=nodes, models=("org/chat", "org/code"), price_per_request=10),),
        node_count=nodes,
        workload=Workload(rate=DEFAULT_RATE_PER_PROVIDER * nodes, models=models, timeout=30.0),
        promises=Promises(max_lost_requests=0),
        advert_interval=DEFAULT_ADVERT_INTERVAL,
        source="builtin:model")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LoadSpread:
    """How evenly the successful requests spread over the providers."""

    # Gini coefficient of requests per provider (0: all equal; 1: one took everything),
    # over every provider, idle ones included.
    gini: float
    # Busiest provider's requests over the mean.
    max_over_mean: float
    # Providers that answered at least one request.
    used: int
    # Share of the requests answered by the fastest and the slowest quarter of providers.
    fastest_quarter: float
    slowest_quarter: float


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What a model run measured besides the request summary."""

    providers: int
    clients: int
    # Virtual seconds simulated (warm-up and drain included), wall and CPU seconds it took.
    virtual_s: float
    wall_s: float
    cpu_s: float
    # Event-loop callbacks run (timers, task steps, message deliveries) and per wall second.
    events: int
    events_per_wall_s: float
    # Virtual seconds from the last provider's join until every client's view held every
    # provider (None: some client never got there).
    convergence_s: float | None
    # Adverts published by all providers.
    adverts: int
    # Gossip per node per second (virtual), sent + received: messages and bytes.
    provider_msgs_per_s: float
    provider_bytes_per_s: float
    client_msgs_per_s: float
    client_bytes_per_s: float
    load: LoadSpread
    # Over the samples of the run: the lowest share of live providers in a client's view,
    # and the most entries of providers that were down.
    min_view_completeness: float
    max_stale_entries: int


@dataclass(frozen=True, slots=True)
class ModelResult:
    """Everything a model run produced: `summary` (as `simnet up`'s), `stats`, raw data."""

    scenario: Scenario
    summary: Summary
    stats: ModelStats
    records: tuple[RequestRecord, ...]
    faults: tuple[FaultEvent, ...]
    # Per provider: index, group, slowness, requests answered, price per request.
    providers: tuple[dict[str, Any], ...]
    # (virtual seconds from the workload's start, mean view completeness, stale entries).
    views: tuple[tuple[float, float, int], ...]


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values (0 when all are equal or all are zero)."""
    ordered = sorted(values)
    n, total = len(ordered), sum(ordered)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * weighted) / (n * total) - (n + 1) / n


def load_spread(counts: Sequence[int], slowness: Sequence[float]) -> LoadSpread:
    """Spread of `counts` (requests per provider) and how it follows `slowness`."""
    n = len(counts)
    total = sum(counts)
    mean = total / n if n else 0.0
    by_speed = sorted(range(n), key=lambda i: (slowness[i], i))
    quarter = max(1, n // 4)
    share = (lambda ids: sum(counts[i] for i in ids) / total) if total else (lambda ids: 0.0)
    return LoadSpread(
        gini=gini(counts), max_over_mean=max(counts) / mean if mean else 0.0,
        used=sum(1 for c in counts if c), fastest_quarter=share(by_speed[:quarter]),
        slowest_quarter=share(by_speed[-quarter:]))


# --------------------------------------------------------------------------- the network


class _Latency:
    """One-way delays: a lognormal base per ordered pair of peers (drawn once), jittered."""

    __slots__ = ("_base", "_jitter", "_mu", "_rng", "_sigma")

    def __init__(self, rng: random.Random, median: float, sigma: float, jitter: float) -> None:
        self._rng = rng
        self._mu = math.log(median)
        self._sigma = sigma
        self._jitter = jitter
        self._base: dict[int, float] = {}

    def base(self, a: int, b: int) -> float:
        """The typical one-way delay from peer `a` to peer `b` (seconds)."""
        key = a << 20 | b
        base = self._base.get(key)
        if base is None:
            base = self._base[key] = self._rng.lognormvariate(self._mu, self._sigma)
        return base

    def one_way(self, a: int, b: int, rng: random.Random) -> float:
        """One message's delay from `a` to `b`: the pair's base, jittered."""
        base = self.base(a, b)
        return base * rng.lognormvariate(0.0, self._jitter) if self._jitter else base


# --------------------------------------------------------------------------- requests


class _Flight:
    """One request's send, as Router.send: wakes when an attempt ends."""

    __slots__ = ("client", "digest", "items", "waiter")

    def __init__(self, client: _Client, digest: Digest, items: int) -> None:
        self.client = client
        self.digest = digest
        self.items = items
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Attempt:
    """One call to one provider. `code` is None while it runs, then OK or a gRPC code name."""

    __slots__ = ("batch", "candidate", "code", "compute", "deadline", "enqueued", "flight",
                 "provider", "queued", "started")

    def __init__(self, flight: _Flight, candidate: Candidate, provider: _Provider,
                 started: float, deadline: float) -> None:
        self.flight = flight
        self.candidate = candidate
        self.provider = provider
        self.started = started
        self.deadline = deadline
        self.code: str | None = None
        self.enqueued = 0.0
        self.queued = self.compute = 0.0
        self.batch = 0


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# --------------------------------------------------------------------------- providers


class _Provider:
    """A simulated provider: real Membership, simulated batching model server."""

    UP, DRAINING, DOWN = "up", "draining", "down"

    def __init__(self, model: _Model, index: int, spec: NodeSpec, group: int,
                 slowness: float) -> None:
        self.model = model
        self.index = index
        self.spec = spec
        self.group = group
        self.slowness = slowness
        self.identity = Identity.from_seed(
            hashlib.sha256(f"simnet-model:{model.seed}:provider:{index}".encode()).digest())
        self.peer_id = self.identity.peer_id
        self.endpoint = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:8001"
        self.price = Price(spec.price_per_request, spec.price_per_1k_items)
        self.digests = {model.digest_of[name]: name for name in spec.models}
        self.state = self.DOWN
        self.slowdown = 1.0
        self.host: MemoryGossip | None = None
        self.membership: Membership | None = None
        self.task: asyncio.Task[None] | None = None
        self.queues: dict[Digest, deque[_Attempt]] = {d: deque() for d in self.digests}
        # Digest -> (timer ending the batch, its attempts) while a batch executes.
        self.busy: dict[Digest, tuple[asyncio.TimerHandle, list[_Attempt]]] = {}
        self.items_per_second: dict[Digest, float | None] = dict.fromkeys(self.digests)
        self.rng = random.Random(model.rng.getrandbits(64))
        self.published = 0
        self.gossip: list[tuple[int, int]] = []  # (messages, bytes) of hosts it has left
        self._advert: Advert | None = None

    # ------------------------------------------------------------------ advert

    def advert(self) -> Advert:
        """What the provider offers now (Membership adds sequence, timestamp and TTL)."""
        if self._advert is None:
            offers = tuple(ModelOffer(
                digest=d, name=name, max_batch_size=self.model.settings.max_batch,
                items_per_second=round(self.items_per_second[d] or 0.0, 1),
                queue_depth=len(self.queues[d])) for d, name in self.digests.items())
            self._advert = Advert(
                peer_id=self.peer_id, endpoints=(self.endpoint,), models=offers,
                sequence=0, timestamp=0.0, ttl=0.0,
                queue_depth=sum(o.queue_depth for o in offers), hardware=_HARDWARE,
                price=self.price, region=self.spec.region, software_version=__version__,
                draining=self.state is not self.UP)
        return self._advert

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        m = self.model
        self.state = self.UP
        self.slowdown = 1.0
        self._advert = None
        self.host = m.network.join(self.peer_id)
        self.membership = Membership(
            self.host, identity=self.identity, source=self.advert,
            clock=m.clock, rng=random.Random(self.rng.getrandbits(64)), config=m.provider_config)
        self.task = m.tg.create_task(self.membership.run(), name=f"provider-{self.index}")

    def _stop_gossip(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.membership is not None:
            self.published += self.membership.counters["published"]
        if self.host is not None:
            s = self.host.stats()
            self.gossip.append((s.messages_sent + s.messages_received,
                                s.bytes_sent + s.bytes_received))
        self.task = self.membership = self.host = None

    def kill(self) -> None:
        """Crash: the process dies; its connections reset (clients see UNAVAILABLE)."""
        assert self.host is not None
        self.model.network.kill(self.peer_id)
        self._stop_gossip()
        self.state = self.DOWN
        for handle, batch in self.busy.values():
            handle.cancel()
            for attempt in batch:
                self.model.reply(self, attempt, "UNAVAILABLE")
        self.busy.clear()
        for queue in self.queues.values():
            for attempt in queue:
                self.model.reply(self, attempt, "UNAVAILABLE")
            queue.clear()

    async def leave(self) -> None:
        """Graceful: advertise draining, refuse new work, finish the queue, then go."""
        self.state = self.DRAINING
        self._advert = None
        if self.membership is not None:  # tell clients first, as the node does
            await self.membership.publish_now()
        if not self.busy:
            await self._close()

    async def _close(self) -> None:
        host = self.host
        self._stop_gossip()
        self.state = self.DOWN
        if host is not None:
            await host.close()

    # ------------------------------------------------------------------ serving

    def arrive(self, attempt: _Attempt) -> None:
        """A request reached the provider (a loop callback)."""
        m = self.model
        if self.state is not self.UP:  # refused (down) or UNAVAILABLE (draining)
            m.reply(self, attempt, "UNAVAILABLE")
            return
        digest = attempt.flight.digest
        queue = self.queues.get(digest)
        if queue is None:
            m.reply(self, attempt, "NOT_FOUND")
            return
        if len(queue) >= m.settings.max_queue:
            m.reply(self, attempt, "RESOURCE_EXHAUSTED")
            return
        attempt.enqueued = m.loop.time()
        queue.append(attempt)
        self._advert = None
        if digest not in self.busy:
            self._dispatch(digest)

    def _dispatch(self, digest: Digest) -> None:
        m = self.model
        settings = m.settings
        now = m.loop.time()
        queue = self.queues[digest]
        batch: list[_Attempt] = []
        items = 0
        while queue:
            attempt = queue[0]
            # Skipped as the node's batcher skips them: the client gave up (a hedge won,
            # the deadline passed), or the deadline it sent has passed.
            if attempt.code is not None or attempt.deadline <= now:
                queue.popleft()
                continue
            size = attempt.flight.items
            if batch and items + size > settings.max_batch:
                break
            queue.popleft()
            batch.append(attempt)
            items += size
        self._advert = None
        if not batch:
            if self.state is self.DRAINING and not self.busy:
                m.tg.create_task(self._close())
            return
        service = ((settings.base_ms + settings.per_item_ms * items) / 1000 * self.slowness
                   * self.slowdown * self.rng.lognormvariate(0.0, settings.service_sigma))
        handle = m.loop.call_later(service, self._done, digest, now, service, items)
        self.busy[digest] = (handle, batch)

    def _done(self, digest: Digest, started: float, service: float, items: int) -> None:
        _, batch = self.busy.pop(digest)
        ips = items / service if service > 0 else 0.0
        old = self.items_per_second[digest]
        self.items_per_second[digest] = ips if old is None else old + 0.2 * (ips - old)
        for attempt in batch:
            attempt.queued = started - attempt.enqueued
            attempt.compute = service
            attempt.batch = items
            self.model.reply(self, attempt, _OK)
        self._dispatch(digest)


# --------------------------------------------------------------------------- clients


class _Client:
    """A light peer: real Membership (listen-only), real scheduler, simulated sends."""

    def __init__(self, model: _Model, index: int) -> None:
        self.model = model
        self.index = index
        identity = Identity.from_seed(
            hashlib.sha256(f"simnet-model:{model.seed}:client:{index}".encode()).digest())
        self.peer_id = identity.peer_id
        self.host = model.network.join(self.peer_id)
        self.membership = Membership(self.host, clock=model.clock,
                                     rng=random.Random(model.rng.getrandbits(64)),
                                     config=model.client_config)
        self.rng = random.Random(model.rng.getrandbits(64))
        self.observations = Observations()
        self.in_flight = 0
        self.converged_at: float | None = None

    async def converge(self, providers: int, timeout: float) -> None:
        """Note when this client's view first holds `providers` providers."""
        if await self.membership.wait_until(lambda v: len(v) >= providers, timeout):
            self.converged_at = self.model.loop.time()

    def forget_idle(self, now: float) -> None:
        obs = self.observations
        for peer, s in list(obs.snapshot().peers.items()):
            if s.in_flight or s.opened:
                continue
            last = max(s.surprise_at, s.failure_times[-1] if s.failure_times else -math.inf)
            if now - last > _FORGET_AFTER:
                obs.forget(peer)

    async def send(self, req: PlannedRequest, start: float) -> RequestRecord:
        """Route one request as swarm/client/_router.py's Router.send does."""
        m = self.model
        loop, settings, obs = m.loop, m.settings, self.observations
        items = m.workload.items
        flight = _Flight(self, m.digest_of[req.model], items)
        started = loop.time()
        deadline = started + m.workload.timeout
        tried: set[PeerId] = set()
        running: list[_Attempt] = []
        last_error: str | None = None
        attempts = 0
        hedged = False

        def record(outcome: str, attempt: _Attempt | None = None) -> RequestRecord:
            latency = loop.time() - start - req.at
            if attempt is None:
                return RequestRecord(req.index, req.model, items, req.at, req.at, latency,
                                     outcome, None, attempts)
            return RequestRecord(req.index, req.model, items, req.at, req.at, latency, outcome,
                                 attempt.provider.index, attempts, attempt.candidate.price)

        def candidates() -> list[Candidate]:
            request = Request(digest=flight.digest, items=items, deadline=deadline,
                              max_price=settings.max_price, preference=m.preference,
                              exclude=frozenset(tried))
            return choose(self.membership.view, request, obs, self.rng, loop.time(),
                          m.scheduler_config)

        self.in_flight += 1
        try:
            while True:
                if not running:
                    if attempts >= settings.max_attempts or loop.time() >= deadline:
                        break
                    try:
                        pick = candidates()[0]
                    except NoProviderError:
                        if last_error is not None:
                            break
                        return record("NO_PROVIDER")
                    running.append(m.send_attempt(flight, pick, deadline))
                    tried.add(pick.peer)
                    attempts += 1
                hedge_at = math.inf
                if (settings.hedge and not hedged and len(running) == 1
                        and attempts < settings.max_attempts):
                    p95 = obs.p95(running[0].candidate.peer)
                    if p95 is not None:
                        hedge_at = running[0].started + p95
                if all(a.code is None for a in running):
                    waiter = flight.waiter = loop.create_future()
                    timer = loop.call_at(min(hedge_at, deadline), _resolve, waiter)
                    try:
                        await waiter
                    finally:
                        flight.waiter = None
                        timer.cancel()
                now = loop.time()
                if now >= deadline:  # every attempt's own timeout (the gRPC deadline)
                    for a in running:
                        if a.code is None:
                            a.code = "DEADLINE_EXCEEDED"
                done = [a for a in running if a.code is not None]
                if not done:  # slower than its p95: hedge on the next candidate
                    hedged = True
                    try:
                        pick = candidates()[0]
                    except NoProviderError:
                        continue
                    running.append(m.send_attempt(flight, pick, deadline))
                    tried.add(pick.peer)
                    attempts += 1
                    continue
                for attempt in done:
                    running.remove(attempt)
                    code = self._finish(attempt, items)
                    if code == _OK:
                        return record(OK, attempt)
                    if code not in _RETRYABLE:
                        return record(code)
                    last_error = code
        finally:
            self.in_flight -= 1
            now = loop.time()
            for attempt in running:  # the hedge that lost, or everything on error
                if attempt.code is None:
                    attempt.code = "CANCELLED"
                obs.finish(attempt.candidate.peer, now)
        if loop.time() >= deadline:
            return record("DEADLINE_EXCEEDED")
        assert last_error is not None
        return record(last_error)

    def _finish(self, attempt: _Attempt, items: int) -> str:
        """Record the outcome of an ended attempt (as Router._finish); its code."""
        now = self.model.loop.time()
        peer = attempt.candidate.peer
        obs = self.observations
        obs.finish(peer, now)
        code = attempt.code
        assert code is not None
        if code != _OK:
            kind = Failure.from_code(code)
            if kind is not None:
                obs.record_failure(peer, kind, now)
            return code
        service = attempt.compute * items / max(1, attempt.batch)
        obs.record_success(peer, now - attempt.started, items, now,
                           expected=attempt.candidate.expected_latency, queued=attempt.queued,
                           service=service)
        return code


# --------------------------------------------------------------------------- the model


class _Model:
    """Everything of one run; `run()` is the whole simulation (on a VirtualTimeLoop)."""

    def __init__(self, scenario: Scenario, progress: Callable[[str], None] | None) -> None:
        self.scenario = scenario
        self.settings = s = scenario.model
        self.workload = scenario.workload
        self.seed = scenario.seed
        self.progress = progress
        self.rng = random.Random(f"simnet-model:{scenario.seed}")
        interval = scenario.advert_interval or DEFAULT_ADVERT_INTERVAL
        # Short advert intervals (tests, small swarms) are checked often enough to keep them.
        # Providers only publish (they route nothing): they stay out of the advert mesh.
        self.provider_config = MembershipConfig(
            advert_interval=interval, check_interval=min(s.check_interval, interval / 5),
            min_interval=min(s.min_interval, interval / 2), listen=False)
        self.client_config = MembershipConfig(check_interval=1.0)
        self.scheduler_config = SchedulerConfig(max_considered=s.max_considered or None)
        self.preference = Preference.parse(s.preference)
        specs = scenario.node_specs()
        names = sorted({name for spec in specs for name in spec.models})
        self.digest_of = {name: Digest.of(f"simnet-model:{name}".encode()) for name in names}
        self.records: list[RequestRecord] = []
        self.fault_events: list[FaultEvent] = []
        self.views: list[tuple[float, float, int]] = []
        self.min_complete = 1.0
        self.t0 = s.warmup
        self.last_join = 0.0
        self._specs = specs
        self.providers: list[_Provider] = []
        self.clients: list[_Client] = []

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
        self.latency = _Latency(random.Random(self.rng.getrandbits(64)), s.latency_ms / 1000,
                                s.latency_sigma, s.jitter)
        self.net_rng = random.Random(self.rng.getrandbits(64))
        # Node i belongs to the group that Scenario.node_specs gave it.
        group_of = [i for i, g in enumerate(self.scenario.groups) for _ in range(g.count)]
        spread = math.log(s.speed_spread)
        for spec in self._specs:
            slowness = math.exp(self.rng.random() * spread) * spec.slowdown
            self.providers.append(_Provider(self, spec.index, spec,
                                            group_of[spec.index % len(group_of)], slowness))
        self.by_peer = {p.peer_id: p for p in self.providers}
        self.clients = [_Client(self, i) for i in range(s.clients)]
        self.index_of = {p.peer_id: p.index for p in self.providers}
        self.index_of.update({c.peer_id: len(self.providers) + c.index for c in self.clients})
        self.network.set_route(self._route())
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
            await self._drive(plan, random.Random(self.rng.getrandbits(64)))
            for task in background:
                task.cancel()
            for p in self.providers:
                if p.task is not None:
                    p.task.cancel()
        return loop.time(), loop.callbacks

    def _route(self) -> Callable[[PeerId, PeerId, GossipMessage, random.Random], RouteDecision]:
        # A gossip hop takes the pair's base latency, unjittered: one decision per pair,
        # made once (a million hops a minute at 2,000 providers). Requests are jittered.
        index, latency, loss = self.index_of, self.latency, self.settings.loss
        decisions: dict[tuple[str, str], RouteDecision] = {}

        def route(src: PeerId, dst: PeerId, msg: GossipMessage,
                  rng: random.Random) -> RouteDecision:
            if loss and rng.random() < loss:
                return _DROP
            key = (src.value, dst.value)
            decision = decisions.get(key)
            if decision is None:
                decision = decisions[key] = RouteDecision(
                    delay=latency.base(index[src], index[dst]))
            return decision

        return route

    # ------------------------------------------------------------------ requests

    def send_attempt(self, flight: _Flight, candidate: Candidate,
                     deadline: float) -> _Attempt:
        """Send an attempt to the candidate (as Router._start)."""
        now = self.loop.time()
        client = flight.client
        client.observations.start(candidate.peer, now, flight.items)
        provider = self.by_peer[candidate.peer]
        attempt = _Attempt(flight, candidate, provider, now, deadline)
        if self.network.reachable(client.peer_id, provider.peer_id):  # else lost in the cut
            delay = self.latency.one_way(len(self.providers) + client.index, provider.index,
                                         self.net_rng)
            self.loop.call_later(delay, provider.arrive, attempt)
        return attempt

    def reply(self, provider: _Provider, attempt: _Attempt, code: str) -> None:
        """The provider answers `attempt` with `code` (lost when a partition cuts them)."""
        client = attempt.flight.client
        if attempt.code is not None or not self.network.reachable(provider.peer_id,
                                                                  client.peer_id):
            return
        delay = self.latency.one_way(provider.index, len(self.providers) + client.index,
                                     self.net_rng)
        self.loop.call_later(delay, self._answered, attempt, code)

    @staticmethod
    def _answered(attempt: _Attempt, code: str) -> None:
        if attempt.code is None:  # else the client gave up on it already
            attempt.code = code
            attempt.flight.wake()

    async def _drive(self, plan: Sequence[PlannedRequest], rng: random.Random) -> None:
        loop = self.loop
        t0, clients = self.t0, self.clients
        limit = self.workload.max_in_flight
        items = self.workload.items

        async def one(client: _Client, req: PlannedRequest) -> None:
            try:
                self.records.append(await client.send(req, t0))
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

    def _targets(self, fault: Fault, states: tuple[str, ...]) -> list[_Provider]:
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
            return "unsupported: the model has no registry yet"
        if kind is FaultKind.REJOIN:
            targets = self._targets(fault, (_Provider.DOWN,))
        else:
            targets = self._targets(fault, (_Provider.UP,))
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
    def _unslow(targets: list[_Provider], slowdown: float) -> None:
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
            down = [p.peer_id for p in self.providers if p.state is _Provider.DOWN]
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
        records = self.records
        ok = sum(1 for r in records if r.ok)
        up = sum(1 for p in self.providers if p.state is _Provider.UP)
        return (f"t={now - self.t0:5.0f}s  requests done {len(records)} ({ok} ok)  "
                f"providers up {up}/{len(self.providers)}  cpu {time.process_time():.0f}s")

    # ------------------------------------------------------------------ results

    def stats(self, virtual: float, events: int, wall: float, cpu: float) -> ModelStats:
        providers, clients = self.providers, self.clients
        for p in providers:  # fold the live hosts' counters in
            if p.host is not None:
                p._stop_gossip()
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
        return ModelStats(
            providers=len(providers), clients=len(clients), virtual_s=virtual, wall_s=wall,
            cpu_s=cpu, events=events, events_per_wall_s=events / wall if wall > 0 else 0.0,
            convergence_s=convergence, adverts=sum(p.published for p in providers),
            provider_msgs_per_s=p_msgs / len(providers) / span,
            provider_bytes_per_s=p_bytes / len(providers) / span,
            client_msgs_per_s=c_msgs / len(clients) / span,
            client_bytes_per_s=c_bytes / len(clients) / span,
            load=load, min_view_completeness=self.min_complete,
            max_stale_entries=max((stale for _, _, stale in self.views), default=0))


def run_model(scenario: Scenario, *,
              progress: Callable[[str], None] | None = None) -> ModelResult:
    """Simulate `scenario` in virtual time (module docstring); deterministic for its seed.

    `progress` receives a line every simulated minute and one per fault.
    """
    model = _Model(scenario, progress)
    wall, cpu = time.perf_counter(), time.process_time()
    # The run allocates millions of short-lived objects over a large live heap: the
    # default thresholds make the cyclic GC rescan that heap all the time (a third of
    # the run's CPU at 2,000 providers). Collect rarely, then restore.
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        virtual, events = run_virtual(model.run())
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    records = tuple(sorted(model.records, key=lambda r: r.index))
    summary = summarize(records, duration=scenario.duration, promises=scenario.promises,
                        faults=model.fault_events)
    providers = tuple({"index": p.index, "group": p.group, "slowness": round(p.slowness, 3),
                       "served": summary.node_requests.get(p.index, 0),
                       "price_per_request": p.price.per_request_micros}
                      for p in model.providers)
    return ModelResult(scenario=scenario, summary=summary,
                       stats=model.stats(virtual, events, wall, cpu), records=records,
                       faults=tuple(model.fault_events), providers=providers,
                       views=tuple(model.views))


# --------------------------------------------------------------------------- report


def write_model_report(folder: Path, result: ModelResult, *, title: str,
                       plot_sample: int = 5000) -> list[Path]:
    """Write report.json, summary.md, latency.png (a sample of the requests) and load.png
    (requests per provider, by speed); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    report = {
        "title": title,
        "scenario": _jsonable(result.scenario),
        "summary": {**_jsonable(summary), "kept": summary.kept},
        "model": _jsonable(result.stats),
        "faults": _jsonable(list(result.faults)),
        "providers": list(result.providers),
        "views": [{"t": t, "completeness": c, "stale": s} for t, c, s in result.views],
        "requests": [dataclasses.asdict(r) for r in result.records],
    }
    paths = [folder / "report.json", folder / "summary.md", folder / "latency.png",
             folder / "load.png"]
    paths[0].write_text(json.dumps(report) + "\n")
    st = result.stats
    notes = [f"virtual time, {st.providers} providers, {st.clients} clients: {st.virtual_s:.0f} "
             f"virtual s in {st.wall_s:.1f} wall s ({st.cpu_s:.1f} CPU s), "
             f"{st.events_per_wall_s:,.0f} events/s",
             f"load spread: Gini {st.load.gini:.2f}, max/mean {st.load.max_over_mean:.1f}, "
             f"fastest quarter {st.load.fastest_quarter:.0%}, slowest quarter "
             f"{st.load.slowest_quarter:.0%}"]
    paths[1].write_text(summary_markdown(summary, title=title, faults=result.faults,
                                         notes=notes))
    records = result.records
    if len(records) > plot_sample:
        step = len(records) / plot_sample
        records = tuple(records[int(i * step)] for i in range(plot_sample))
    plot_latency(paths[2], records, result.faults, duration=summary.duration,
                 title=f"{title}: latency ({len(records)} of {len(result.records)} requests)")
    _plot_load(paths[3], result, title=f"{title}: requests per provider")
    return paths


def _plot_load(path: Path, result: ModelResult, *, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax = fig.add_subplot()
    rows = sorted(result.providers, key=lambda p: (p["slowness"], p["index"]))
    ax.scatter([p["slowness"] for p in rows], [p["served"] for p in rows], s=6, alpha=0.6)
    ax.set_xlabel("slowness (1 = fastest)")
    ax.set_ylabel("requests answered")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)

