""".venv/bin/python bench/scheduler_bench.py   # [--clients 8] [--seed 1] [--advert-period 2] [--duration 60]
                                              # [--policies choose,oracle] [--set explore=0] [--no-depth]
                                              # [--admission-wait MS]

Routing policies compared in a seeded discrete-event simulation (virtual time, no sleeping).

Model (seeded; all times virtual):
  providers  20, each one FIFO queue served one request at a time (no batching). Per-item
             service times are spread evenly in log over 4-40 ms (10x) and shuffled; a
             request of n items takes n * per_item * lognormal(sigma 0.25, mean 1). Prices
             (micros per request) rise with speed, with noise.
  clients    8 independent clients, each with its own Observations and RNG. Poisson
             arrivals at 70% of total capacity, each to a random client; 1-4 items per
             request. RTT is fixed per (client, provider) pair, 2-20 ms, half each way;
             each client measures it once (record_rtt) when it starts.
  adverts    every provider gossips an advert every T seconds (default 2, random phase):
             its waiting-queue depth and its items/second. All clients share that stale
             view. Otherwise a client knows only its own requests: what it has in flight
             and, from each answer, the latency and the queue and execution seconds the
             provider reports (record_success's `queued` / `service`).
  admission  `choose`'s attempts may be refused (swarm.scheduler.choose_attempt, as the
             Router does): a provider whose waiting work exceeds `--admission-wait` ms at
             its speed (swarm.scheduler.admits, as the node does) answers at once with its
             queue depth; the client records it (record_refusal) and sends the request to
             its next choice, at most `max_refusals` times (`--set max_refusals=N`), then
             to the best by estimate, which must queue it. `--admission-wait 0`: off
             (40 ms by default: the node's admission_wait, 50 ms, scaled to this
             model's 4-40 ms per item; 20-60 ms gave p99 96-105 ms, bench/RESULTS.md).
  policies   choose        swarm.scheduler.choose, Preference.LATENCY
             choose 0.5    choose with Preference(0.5): latency and price weighed equally
             random        uniform over the 20 providers
             roundrobin    per client, each client starting at a different provider
             oracle        join-shortest-expected-delay with perfect, instant knowledge of
                           every provider's true backlog (requests in transit included) and
                           speed: min over providers of rtt + backlog + own work (expected
                           values; the service noise is unknown to it too)
             oracle, stale the same, but the backlogs it sees are refreshed only every
                           `--stale-ms` (10) ms; each client adds its own dispatches since.
                           Not a target: it shows what staleness alone costs.
             choose, cap   choose with a max_price: the cheapest cap whose eligible
                           providers still run below 85% load.

Arrivals stop at `--duration`; every request then runs to completion, so unstable policies
pay their whole queueing delay ("drain s": virtual seconds from the last arrival to the
last answer). Requests arriving in the first 10 s are left out of the statistics. Exits 1
when p99(choose)/p99(oracle) > 1.3, p99(random)/p99(choose) < 2, or a capped request paid
above the cap.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarm._types import Digest, PeerId
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, Price, admit
from swarm.scheduler import (
    AdmissionPolicy,
    Observations,
    Preference,
    Request,
    SchedulerConfig,
    admits,
    choose_attempt,
)

DIGEST = Digest.of(b"bench-model")
WALL_OFFSET = 1_795_000_000.0  # unix time of virtual t = 0 (advert timestamps)


@dataclass(frozen=True)
class Setup:
    providers: int = 20
    clients: int = 8
    # Offered load as a fraction of total capacity.
    load: float = 0.7
    # Seconds between a provider's adverts.
    advert_period: float = 2.0
    # Virtual seconds of arrivals; the first `warmup` of them are left out of the statistics.
    duration: float = 60.0
    warmup: float = 10.0
    fastest_per_item: float = 0.004
    speed_spread: float = 10.0
    max_items: int = 4
    service_sigma: float = 0.25
    rtt_range: tuple[float, float] = (0.002, 0.02)
    # How old the stale oracle's knowledge of the backlogs is.
    stale: float = 0.010
    seed: int = 1
    # Answers carry the provider's queue depth (swarm_queue_depth), as the node's do.
    report_depth: bool = True
    # Providers refuse attempts that allow it past this many seconds of waiting work
    # (AdmissionPolicy.target_wait); 0: admission off.
    admission_wait: float = 0.0
    count_executing: bool = True
    config: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class Job:
    client: int
    arrival: float
    items: int
    service: float  # actual execution seconds (the noise is unknown to every policy)
    provider: int = -1
    price: float = 0.0
    work: float = 0.0  # expected execution seconds at its provider
    expected: float | None = None  # what choose predicted
    reached: float = 0.0
    started: float = 0.0
    answered: float = 0.0
    depth: int = 0  # requests waiting at its provider when it finished (swarm_queue_depth)
    sent: float = 0.0  # when its current attempt left the client
    admissible: bool = False  # its current attempt may be refused
    tried: frozenset[PeerId] = frozenset()
    refused: frozenset[PeerId] = frozenset()
    refusals: int = 0


@dataclass
class Provider:
    index: int
    peer: PeerId
    per_item: float
    price: Price
    waiting: deque[Job] = field(default_factory=deque)
    busy: Job | None = None
    # Expected seconds of work dispatched to it and not yet done (in transit, queued, running).
    backlog: float = 0.0
    sequence: int = 0


@dataclass
class Result:
    latencies: np.ndarray
    prices: np.ndarray
    drain: float
    wall: float
    refusals: int = 0
    jobs: list[Job] = field(default_factory=list)  # those in the statistics

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


def make_world(setup: Setup) -> tuple[list[Provider], np.ndarray]:
    """Providers and the (client, provider) RTT matrix; the same for every policy."""
    rng = random.Random(setup.seed)
    steps = [i / max(1, setup.providers - 1) for i in range(setup.providers)]
    rng.shuffle(steps)
    providers = []
    for i, step in enumerate(steps):
        per_item = setup.fastest_per_item * setup.speed_spread ** step
        speed = setup.fastest_per_item / per_item  # 1 = fastest, 0.1 = slowest
        micros = max(1, round(20 * speed ** 0.8 * math.exp(rng.gauss(0, 0.3))))
        peer = Identity.from_seed(bytes([i + 1]) * 32).peer_id
        providers.append(Provider(i, peer, per_item, Price(per_request_micros=micros)))
    rtt = np.array([[rng.uniform(*setup.rtt_range) for _ in providers] for _ in range(setup.clients)])
    return providers, rtt


def capacity(setup: Setup, providers: list[Provider]) -> float:
    """Requests per second the given providers can serve together."""
    mean_items = (1 + setup.max_items) / 2
    return sum(1 / (p.per_item * mean_items) for p in providers)


Pick = Callable[[Job, float], tuple[int, bool]]  # (job, now) -> provider index, admissible


class Sim:
    """One run: the event loop, the providers, the clients' observations and the shared view."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.providers, self.rtt = make_world(setup)
        self.by_peer = {p.peer: p for p in self.providers}
        self.view = PeerView()
        self.observations = [Observations() for _ in range(setup.clients)]
        for c, obs in enumerate(self.observations):
            for p in self.providers:
                obs.record_rtt(p.peer, float(self.rtt[c, p.index]), 0.0)
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self.refusals = 0

    def at(self, t: float, action: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, action))

    def run(self, pick: Pick) -> list[Job]:
        setup, providers = self.setup, self.providers
        rng = random.Random(setup.seed * 7919 + 17)  # arrivals, sizes, noise: same for all policies
        rate = setup.load * capacity(setup, providers)
        done: list[Job] = []
        admission = AdmissionPolicy(setup.admission_wait)
        self.refusals = 0

        def arrive(now: float) -> None:
            if now < setup.duration:
                self.at(now + rng.expovariate(rate), arrive)
            items = rng.randint(1, setup.max_items)
            noise = math.exp(rng.gauss(0, setup.service_sigma) - setup.service_sigma ** 2 / 2)
            job = Job(rng.randrange(setup.clients), now, items, service=0.0)
            job.service = noise  # times the work at whichever provider executes it
            dispatch(job, now)

        def dispatch(job: Job, now: float) -> None:
            index, job.admissible = pick(job, now)
            p = providers[index]
            job.provider, job.price, job.work = p.index, p.price.cost(job.items), job.items * p.per_item
            job.sent = now
            job.tried |= {p.peer}
            p.backlog += job.work
            self.observations[job.client].start(p.peer, now, job.items)
            self.at(now + self.rtt[job.client, p.index] / 2, lambda t: reach(job, t))

        def reach(job: Job, now: float) -> None:
            p = providers[job.provider]
            # What a node knows of its running execution: its expected length and start.
            executing = 0.0 if p.busy is None else max(
                0.0, p.busy.work - (now - p.busy.started)) if setup.count_executing else 0.0
            if job.admissible and not admits(
                    admission, sum(j.items for j in p.waiting), 1 / p.per_item,
                    executing=executing):
                depth = len(p.waiting)
                p.backlog -= job.work
                self.refusals += 1
                self.at(now + self.rtt[job.client, p.index] / 2, lambda t: refused(job, depth, t))
                return
            job.reached = now
            job.service = job.work * job.service  # the noise factor, set at arrival
            p.waiting.append(job)
            if p.busy is None:
                begin(p, now)

        def refused(job: Job, depth: int, now: float) -> None:
            obs, peer = self.observations[job.client], providers[job.provider].peer
            obs.finish(peer, now)
            obs.record_refusal(peer, depth, now)
            job.refused |= {peer}
            job.refusals += 1
            dispatch(job, now)

        def begin(p: Provider, now: float) -> None:
            job = p.waiting.popleft()
            job.started = now
            p.busy = job
            self.at(now + job.service, lambda t: finish(p, job, t))

        def finish(p: Provider, job: Job, now: float) -> None:
            p.busy = None
            p.backlog -= job.work
            job.depth = len(p.waiting)
            self.at(now + self.rtt[job.client, p.index] / 2, lambda t: answer(job, t))
            if p.waiting:
                begin(p, now)

        def answer(job: Job, now: float) -> None:
            job.answered = now
            obs, peer = self.observations[job.client], providers[job.provider].peer
            obs.finish(peer, now)
            obs.record_success(peer, now - job.sent, job.items, now, expected=job.expected,
                               queued=job.started - job.reached, service=job.service,
                               depth=job.depth if setup.report_depth else None)
            done.append(job)

        def advertise(p: Provider, now: float) -> None:
            p.sequence += 1
            advert = Advert(
                peer_id=p.peer, endpoints=(f"10.0.0.{p.index}:8001",),
                models=(ModelOffer(DIGEST, "bench/model", items_per_second=round(1 / p.per_item, 1),
                                   queue_depth=len(p.waiting)),),
                sequence=p.sequence, timestamp=now + WALL_OFFSET, ttl=3 * setup.advert_period,
                queue_depth=len(p.waiting), price=p.price)
            self.view, verdict = admit(self.view, advert, now, now + WALL_OFFSET)
            if not verdict.ok:
                raise RuntimeError(f"advert refused: {verdict}")
            if now < setup.duration:
                self.at(now + setup.advert_period, lambda t: advertise(p, t))

        for p in providers:  # a joining client syncs every advert; then each at its own phase
            self.view, _ = admit(self.view, _initial(p, setup), 0.0, WALL_OFFSET)
            self.at(rng.uniform(0, setup.advert_period), functools.partial(advertise, p))
        self.at(rng.expovariate(rate), arrive)
        while self._events:
            now, _, action = heapq.heappop(self._events)
            action(now)
        return done


def _initial(p: Provider, setup: Setup) -> Advert:
    return Advert(peer_id=p.peer, endpoints=(f"10.0.0.{p.index}:8001",),
                  models=(ModelOffer(DIGEST, "bench/model", items_per_second=round(1 / p.per_item, 1)),),
                  sequence=0, timestamp=WALL_OFFSET, ttl=3 * setup.advert_period, price=p.price)


@dataclass
class _StaleKnowledge:
    """The stale oracle's copy of the backlogs, and each client's dispatches since it."""

    at: float = -math.inf
    backlog: list[float] = field(default_factory=list)
    own: dict[tuple[int, int], float] = field(default_factory=dict)


def simulate(setup: Setup, policy: str, *, max_price: float | None = None,
             preference: Preference = Preference.LATENCY) -> Result:
    t0 = time.perf_counter()
    sim = Sim(setup)
    providers, rtt = sim.providers, sim.rtt
    pick_rng = random.Random(setup.seed * 104729 + 3)
    client_rngs = [random.Random(setup.seed * 1000 + c) for c in range(setup.clients)]
    next_rr = list(range(setup.clients))
    stale = _StaleKnowledge()
    def jsed(job: Job, backlog: Callable[[Provider], float]) -> int:
        delays = [rtt[job.client, p.index] + backlog(p) + job.items * p.per_item for p in providers]
        return int(np.argmin(delays))

    def pick(job: Job, now: float) -> tuple[int, bool]:
        if policy == "random":
            return pick_rng.randrange(len(providers)), False
        if policy == "roundrobin":
            next_rr[job.client] = (next_rr[job.client] + 1) % len(providers)
            return next_rr[job.client], False
        if policy == "oracle":
            return jsed(job, lambda p: p.backlog), False
        if policy == "stale":
            if now - stale.at >= setup.stale:
                stale.at, stale.backlog, stale.own = now, [p.backlog for p in providers], {}
            index = jsed(job, lambda p: stale.backlog[p.index] + stale.own.get((job.client, p.index), 0.0))
            key = (job.client, index)
            stale.own[key] = stale.own.get(key, 0.0) + job.items * providers[index].per_item
            return index, False
        # As Router.send: the first attempt may explore; attempts may be refused (admission).
        request = Request(DIGEST, items=job.items, max_price=max_price, preference=preference,
                          exclude=job.tried, explore=not job.tried)
        config = setup.config if setup.admission_wait > 0 else replace(setup.config, max_refusals=0)
        first = choose_attempt(sim.view, request, sim.observations[job.client],
                               client_rngs[job.client], now, config, job.refused, job.refusals)[0]
        job.expected = first.expected_latency
        return sim.by_peer[first.peer].index, first.admissible

    done = sim.run(pick)
    kept = [j for j in done if j.arrival >= setup.warmup]
    last_arrival = max(j.arrival for j in done)
    return Result(
        latencies=np.array([j.answered - j.arrival for j in kept]),
        prices=np.array([j.price for j in kept]),
        drain=max(j.answered for j in done) - last_arrival,
        wall=time.perf_counter() - t0,
        refusals=sim.refusals,
        jobs=kept,
    )


def price_cap(setup: Setup) -> float:
    """The cheapest cap whose eligible providers serve the load below 85% utilization."""
    providers, _ = make_world(setup)
    rate = setup.load * capacity(setup, providers)
    for cap in sorted({p.price.per_request_micros for p in providers}):
        if rate <= 0.85 * capacity(setup, [p for p in providers if p.price.per_request_micros <= cap]):
            return float(cap)
    return math.inf


def _number(text: str) -> float | int:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Routing policies compared in a seeded simulation.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--advert-period", type=float, default=2.0, help="seconds between adverts")
    ap.add_argument("--duration", type=float, default=60.0, help="virtual seconds of arrivals")
    ap.add_argument("--load", type=float, default=0.7, help="fraction of total capacity")
    ap.add_argument("--stale-ms", type=float, default=10.0, help="staleness of the stale oracle")
    ap.add_argument("--no-depth", action="store_true",
                    help="answers do not carry the provider's queue depth (as before issue 14)")
    ap.add_argument("--admission-wait", type=float, default=40.0, metavar="MS",
                    help="providers refuse attempts past this many ms of waiting work "
                         "(default: 40; 0: off)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a SchedulerConfig field for choose, e.g. --set explore=0 (repeatable)")
    ap.add_argument("--policies", default=None,
                    help="comma-separated subset of choose, choose0.5, random, roundrobin, oracle, stale, "
                         "cap (default: all)")
    args = ap.parse_args(argv)
    config = SchedulerConfig(**{k: _number(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    setup = Setup(clients=args.clients, advert_period=args.advert_period, duration=args.duration,
                  load=args.load, stale=args.stale_ms / 1000, seed=args.seed,
                  report_depth=not args.no_depth, config=config,
                  admission_wait=args.admission_wait / 1000)
    providers, _ = make_world(setup)
    cap = price_cap(setup)
    print(f"{setup.providers} providers ({min(p.per_item for p in providers) * 1e3:.0f}-"
          f"{max(p.per_item for p in providers) * 1e3:.0f} ms per item, "
          f"{min(p.price.per_request_micros for p in providers)}-"
          f"{max(p.price.per_request_micros for p in providers)} micros per request), "
          f"{setup.clients} clients, load {setup.load:.0%} of {capacity(setup, providers):.0f} "
          f"requests/s, adverts every {setup.advert_period:g} s, {setup.duration:g} s, "
          f"seed {setup.seed}, admission "
          f"{f'{args.admission_wait:g} ms' if args.admission_wait > 0 else 'off'}\n")

    runs: dict[str, tuple[str, Callable[[], Result]]] = {  # key: (name, run)
        "choose": ("choose", lambda: simulate(setup, "choose")),
        "choose0.5": ("choose 0.5", lambda: simulate(setup, "choose", preference=Preference(0.5))),
        "random": ("random", lambda: simulate(setup, "random")),
        "roundrobin": ("roundrobin", lambda: simulate(setup, "roundrobin")),
        "oracle": ("oracle", lambda: simulate(setup, "oracle")),
        "stale": (f"oracle, {args.stale_ms:g} ms stale", lambda: simulate(setup, "stale")),
        "cap": (f"choose, cap {cap:g}", lambda: simulate(setup, "choose", max_price=cap)),
    }
    wanted = set(runs) if args.policies is None else {w.strip() for w in args.policies.split(",")}
    if not wanted <= set(runs):
        ap.error(f"--policies: unknown {sorted(wanted - set(runs))}; known: {', '.join(runs)}")
    results = {name: run() for key, (name, run) in runs.items() if key in wanted}

    print("| policy | requests | p50 ms | p99 ms | mean price | max price | refusals | drain s "
          "| run s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {len(r.latencies)} | {r.p(50) * 1e3:.1f} | {r.p(99) * 1e3:.1f} | "
              f"{r.prices.mean():.2f} | {r.prices.max():g} | {r.refusals} | {r.drain:.2f} | "
              f"{r.wall:.1f} |")
    checks = []
    if "choose" in results and "oracle" in results:
        vs_oracle = results["choose"].p(99) / results["oracle"].p(99)
        checks.append((f"p99(choose) / p99(oracle) = {vs_oracle:.2f}", "<= 1.3", vs_oracle <= 1.3))
    if "choose" in results and "random" in results:
        vs_random = results["random"].p(99) / results["choose"].p(99)
        checks.append((f"p99(random) / p99(choose) = {vs_random:.1f}", ">= 2", vs_random >= 2))
    if f"choose, cap {cap:g}" in results:
        paid = float(results[f"choose, cap {cap:g}"].prices.max())
        checks.append((f"most paid under max_price {cap:g} = {paid:g}", f"<= {cap:g}", paid <= cap))
    print()
    for text, target, ok in checks:
        print(f"- {text} (target {target}): {'met' if ok else 'MISSED'}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
