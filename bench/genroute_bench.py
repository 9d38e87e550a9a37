""".venv/bin/python bench/genroute_bench.py   # [--seed 1] [--load 0.7] [--clients 4] [--duration 300]
                                             # [--eos] [--policies requests,tokens,...]

Routing text generation by requests vs by tokens (issue 15), in a seeded discrete-event
simulation (virtual time, no model, no sleeping): deterministic for a seed.

Model (all times virtual):
  providers  4 continuous-batching engines (as swarm.node._generate's): every step gives
             each running sequence one token, or a chunk of its prompt within a 512-token
             budget, and admits waiting sequences while one of its S slots is free. A step
             takes t0 * (1 + 0.07 * (b - 1)) for b decoding sequences, plus t0 / 16 per
             prompt token (this CPU: 55 ms at b=1, 84 ms at 8, ~170 ms at 32; a 100-token
             prefill ~5 decode steps). t0 = 20, 30, 60, 120 ms; S = 16, 8, 8, 4.
  requests   Poisson arrivals at `--load` of what the providers serve together at full
             batch (decode at the full batch's rate, prefill steps apart), each to a random
             one of `--clients` clients; prompts of 20-300 tokens,
             max_tokens 16-256 (uniform). Each generates max_tokens tokens (`--eos`: a
             uniform 30-100% of them, as answers that stop early). One-way delay 5 ms.
  adverts    every provider gossips its generative offer every 2 s (random phase), what
             swarm.node's generative_offer() sends: queue depth = running + waiting and
             items/s = tokens/s (what routing by requests reads), and the load fields
             (running/waiting sequences, tokens/s all and per sequence, queued prompt and
             decode tokens: what routing by tokens reads). `--liar`: the slowest provider
             always advertises itself idle, at 1000 tokens/s, 200 per sequence.
  policies   requests       swarm.scheduler.choose without a token cost, and no learning
                            from streams: the SDK's generation path before this change.
             tokens         choose with the request's TokenCost (prompt tokens, max_tokens)
                            and each client's Observations fed by Router.watch_stream's
                            StreamWatch (open streams, tokens/s samples): the SDK's path now.
             tokens-advert  the same, from adverts alone (no learning from streams).
             random         uniform over the providers.

Requests arriving in the first 20 s are left out of the statistics; every request then
runs to completion. TTFT is from the request's arrival to its first token at the client,
end to end to its last. Exits 1 unless tokens beats requests on p99 end to end.
"""

from __future__ import annotations

import argparse
import heapq
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
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.routing import StreamWatch
from swarm.scheduler import Observations, Request, SchedulerConfig, TokenCost, choose

DIGEST = Digest.of(b"bench-llm")
WALL_OFFSET = 1_795_000_000.0
BUDGET = 512  # tokens per step
GROWTH = 0.07  # step cost per extra decoding sequence, relative to t0
PREFILL_RATIO = 16.0  # a prompt token costs t0 / PREFILL_RATIO
RATE_WINDOW = 10.0


@dataclass(frozen=True)
class Setup:
    step0: tuple[float, ...] = (0.020, 0.030, 0.060, 0.120)
    slots: tuple[int, ...] = (16, 8, 8, 4)
    clients: int = 4
    load: float = 0.7
    duration: float = 300.0
    warmup: float = 20.0
    advert_period: float = 2.0
    one_way: float = 0.005
    prompt: tuple[int, int] = (20, 300)
    max_tokens: tuple[int, int] = (16, 256)
    eos: bool = False
    # The slowest provider advertises itself idle and fast (200 tokens/s per sequence).
    liar: bool = False
    seed: int = 1
    config: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass(eq=False)
class Job:
    client: int
    arrival: float
    prompt: int
    max_tokens: int
    length: int  # tokens it generates
    provider: int = -1
    first_token: float = 0.0  # at the client
    done: float = 0.0
    watch: StreamWatch | None = None


@dataclass(eq=False)
class Seq:
    job: Job
    prompt_left: int
    generated: int = 0


@dataclass(eq=False)
class Provider:
    index: int
    peer: PeerId
    t0: float
    slots: int
    running: list[Seq] = field(default_factory=list)
    waiting: deque[Seq] = field(default_factory=deque)
    stepping: bool = False
    rate: deque[tuple[float, int, float | None]] = field(default_factory=deque)
    sequence_rate: float = 0.0
    sequence: int = 0
    served: int = 0

    def step_seconds(self, decodes: int, prefill: int) -> float:
        return (self.t0 * (1 + GROWTH * (decodes - 1)) if decodes else 0.0) + \
            prefill * self.t0 / PREFILL_RATIO

    def capacity(self) -> float:
        """Decode tokens/s at a full batch."""
        return self.slots / self.step_seconds(self.slots, 0)

    def requests_per_second(self, decode: float, prompt: float) -> float:
        """Requests/s it serves at a full batch: decode tokens at the full batch's rate,
        prompts in steps of their own (a prefill chunk holds up the whole step)."""
        return 1 / (decode / self.capacity() + prompt * self.t0 / PREFILL_RATIO)

    def offer(self, now: float) -> ModelOffer:
        """What swarm.node's generative_offer() advertises (engine.stats())."""
        while self.rate and self.rate[0][0] < now - RATE_WINDOW:
            self.rate.popleft()
        tokens_per_second = sum(n for _, n, _ in self.rate) / RATE_WINDOW
        steps = [d for _, _, d in self.rate if d is not None]
        if steps:
            self.sequence_rate = len(steps) / sum(steps)
        seqs = [*self.running, *self.waiting]
        return ModelOffer(
            DIGEST, "bench/llm", max_batch_size=self.slots,
            items_per_second=round(tokens_per_second, 1),
            queue_depth=len(self.running) + len(self.waiting),
            running_sequences=len(self.running), waiting_sequences=len(self.waiting),
            tokens_per_second=round(tokens_per_second, 1),
            sequence_tokens_per_second=round(self.sequence_rate, 2),
            queued_prompt_tokens=sum(s.prompt_left for s in seqs),
            queued_decode_tokens=sum(s.job.length - s.generated for s in seqs))


class VirtualClock:
    """The simulation's time, as the swarm.Clock the StreamWatches read."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + WALL_OFFSET

    async def sleep(self, seconds: float) -> None:
        raise RuntimeError("nothing sleeps in virtual time")


Pick = Callable[[Job, float], int]


class Sim:
    def __init__(self, setup: Setup, policy: str) -> None:
        self.setup = setup
        self.policy = policy
        self.providers = [Provider(i, Identity.from_seed(bytes([i + 1]) * 32).peer_id, t0, s)
                          for i, (t0, s) in enumerate(zip(setup.step0, setup.slots, strict=True))]
        self.by_peer = {p.peer: p for p in self.providers}
        self.view = PeerView()
        self.clock = VirtualClock()
        self.observations = [Observations() for _ in range(setup.clients)]
        for obs in self.observations:
            for p in self.providers:
                obs.record_rtt(p.peer, 2 * setup.one_way, 0.0)
        self.client_rngs = [random.Random(setup.seed * 1000 + c) for c in range(setup.clients)]
        self.pick_rng = random.Random(setup.seed * 104729 + 3)
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0

    def at(self, t: float, action: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, action))

    def pick(self, job: Job, now: float) -> int:
        if self.policy == "random":
            return self.pick_rng.randrange(len(self.providers))
        obs = self.observations[job.client]
        rng = self.client_rngs[job.client]
        cost = TokenCost(job.prompt, job.max_tokens)
        if self.policy == "requests":
            request = Request(DIGEST)
        else:  # as the SDK asks: a first attempt, which may explore
            request = Request(DIGEST, generation=cost, explore=True)
        first = choose(self.view, request, obs, rng, now, self.setup.config)[0]
        if self.policy == "tokens":
            job.watch = StreamWatch(obs, self.clock, first.peer, DIGEST, cost,
                                    self.setup.config.generation, first.first_token)
        return self.by_peer[first.peer].index

    def run(self) -> list[Job]:
        setup, providers = self.setup, self.providers
        rng = random.Random(setup.seed * 7919 + 17)  # arrivals and sizes: same for all policies
        decode = sum(setup.max_tokens) / 2 * (0.65 if setup.eos else 1.0)
        rate = setup.load * sum(p.requests_per_second(decode, sum(setup.prompt) / 2)
                                for p in providers)
        done: list[Job] = []

        def arrive(now: float) -> None:
            if now < setup.duration:
                self.at(now + rng.expovariate(rate), arrive)
            max_tokens = rng.randint(*setup.max_tokens)
            length = max(1, round(max_tokens * rng.uniform(0.3, 1.0))) if setup.eos else max_tokens
            job = Job(rng.randrange(setup.clients), now, rng.randint(*setup.prompt), max_tokens,
                      length)
            job.provider = self.pick(job, now)
            p = providers[job.provider]
            p.served += 1
            self.at(now + setup.one_way, lambda t: reach(p, job, t))

        def reach(p: Provider, job: Job, now: float) -> None:
            p.waiting.append(Seq(job, job.prompt))
            begin(p, now)

        def begin(p: Provider, now: float) -> None:
            if p.stepping or not (p.running or p.waiting):
                return
            budget = BUDGET
            decodes = [s for s in p.running if s.prompt_left == 0]
            budget -= len(decodes)
            chunks: list[tuple[Seq, int]] = []
            for s in p.running:
                if s.prompt_left and budget > 0:
                    n = min(s.prompt_left, budget)
                    chunks.append((s, n))
                    budget -= n
            while p.waiting and len(p.running) < p.slots and budget > 0:
                s = p.waiting.popleft()
                p.running.append(s)
                n = min(s.prompt_left, budget)
                chunks.append((s, n))
                budget -= n
            seconds = p.step_seconds(len(decodes), sum(n for _, n in chunks))
            p.stepping = True
            self.at(now + seconds, lambda t: end(p, decodes, chunks, seconds, t))

        def end(p: Provider, decodes: list[Seq], chunks: list[tuple[Seq, int]], seconds: float,
                now: float) -> None:
            p.stepping = False
            tokens = 0
            for s in decodes:
                s.generated += 1
                tokens += 1
            for s, n in chunks:
                s.prompt_left -= n
                if s.prompt_left == 0:  # the prompt is in: its first token
                    s.generated = 1
                    tokens += 1
                    job = s.job
                    self.at(now + setup.one_way, lambda t, job=job: first(job, t))
            p.rate.append((now, tokens, seconds if decodes else None))
            if len(p.rate) > 4096:
                p.rate.popleft()
            for s in [s for s in p.running if s.generated >= s.job.length]:
                p.running.remove(s)
                job = s.job
                self.at(now + setup.one_way, lambda t, job=job: finish(job, t))
            begin(p, now)

        def first(job: Job, now: float) -> None:
            job.first_token = now
            if job.watch is not None:
                job.watch.received(1)

        def finish(job: Job, now: float) -> None:
            job.done = now
            if job.watch is not None:
                job.watch.received(job.length - 1)
                job.watch.close(finished=True)
            done.append(job)

        def advertise(p: Provider, now: float) -> None:
            p.sequence += 1
            offer = p.offer(now)
            if setup.liar and p.index == len(providers) - 1:  # idle and fast, it says
                offer = replace(offer, queue_depth=0, items_per_second=1000.0,
                                running_sequences=0, waiting_sequences=0,
                                tokens_per_second=1000.0, sequence_tokens_per_second=200.0,
                                queued_prompt_tokens=0, queued_decode_tokens=0)
            advert = Advert(peer_id=p.peer, endpoints=(f"10.0.0.{p.index}:8001",),
                            models=(offer,), sequence=p.sequence,
                            timestamp=now + WALL_OFFSET, ttl=3 * setup.advert_period)
            self.view, verdict = admit(self.view, advert, now, now + WALL_OFFSET)
            if not verdict.ok:
                raise RuntimeError(f"advert refused: {verdict}")
            if now < setup.duration:
                self.at(now + setup.advert_period, lambda t: advertise(p, t))

        for p in providers:
            advertise(p, 0.0)
            self.at(rng.uniform(0, setup.advert_period), lambda t, p=p: advertise(p, t))
        self.at(rng.expovariate(rate), arrive)
        while self._events:
            now, _, action = heapq.heappop(self._events)
            self.clock.now = now
            action(now)
        return done


@dataclass
class Result:
    ttft: np.ndarray
    e2e: np.ndarray
    shares: list[int]
    wall: float


def simulate(setup: Setup, policy: str) -> Result:
    started = time.perf_counter()
    sim = Sim(setup, policy)
    jobs = [j for j in sim.run() if j.arrival >= setup.warmup]
    return Result(np.array([j.first_token - j.arrival for j in jobs]),
                  np.array([j.done - j.arrival for j in jobs]),
                  [p.served for p in sim.providers], time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generation routed by requests vs by tokens.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of decode capacity")
    ap.add_argument("--duration", type=float, default=300.0, help="virtual seconds of arrivals")
    ap.add_argument("--eos", action="store_true", help="answers stop at 30-100%% of max_tokens")
    ap.add_argument("--liar", action="store_true",
                    help="the slowest provider advertises itself idle and fast")
    ap.add_argument("--policies", default="requests,tokens,tokens-advert,random")
    args = ap.parse_args(argv)
    setup = Setup(clients=args.clients, load=args.load, duration=args.duration, eos=args.eos,
                  liar=args.liar, seed=args.seed)
    policies = [p.strip() for p in args.policies.split(",")]
    unknown = set(policies) - {"requests", "tokens", "tokens-advert", "random"}
    if unknown:
        ap.error(f"--policies: unknown {sorted(unknown)}")
    providers = Sim(setup, "random").providers
    print(f"{len(providers)} providers (t0 {', '.join(f'{p.t0 * 1e3:g}' for p in providers)} ms; "
          f"slots {', '.join(str(p.slots) for p in providers)}; full-batch decode "
          f"{', '.join(f'{p.capacity():.0f}' for p in providers)} tokens/s), {setup.clients} "
          f"clients, load {setup.load:.0%}, prompts {setup.prompt[0]}-{setup.prompt[1]} tokens, "
          f"max_tokens {setup.max_tokens[0]}-{setup.max_tokens[1]}"
          f"{' (stopping at 30-100%)' if setup.eos else ''}, {setup.duration:g} s, "
          f"seed {setup.seed}{', the slowest lying' if setup.liar else ''}\n")
    results = {p: simulate(setup, p) for p in policies}
    print("| policy | requests | TTFT p50 s | TTFT p99 s | end-to-end p50 s | end-to-end p99 s "
          "| requests per provider | run s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for name, r in results.items():
        print(f"| {name} | {len(r.e2e)} | {np.percentile(r.ttft, 50):.2f} | "
              f"{np.percentile(r.ttft, 99):.2f} | {np.percentile(r.e2e, 50):.2f} | "
              f"{np.percentile(r.e2e, 99):.2f} | {' / '.join(map(str, r.shares))} | "
              f"{r.wall:.1f} |")
    if "requests" in results and "tokens" in results:
        ratio = np.percentile(results["requests"].e2e, 99) / np.percentile(results["tokens"].e2e, 99)
        print(f"\n- p99 end to end, requests / tokens = {ratio:.2f} (target > 1): "
              f"{'met' if ratio > 1 else 'MISSED'}")
        return 0 if ratio > 1 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
