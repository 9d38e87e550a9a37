"""The cheater scenario in virtual time: how fast verification catches providers that return
wrong results, what they deliver before, and what verification costs.

What runs for real: every client's production Router (scheduler, retries) and the SDK's
verification (`swarm.client.send_verified`: `should_verify`, `judge`, the copy and the
referee, FaultEvidence built from the providers' real Ed25519-signed responses); one
honest node's `swarm.staking.Ledger` that receives the evidence (check, witnesses'
eligibility, the slash) and `swarm.staking.eligible`, which decides who the clients may
route to (the rule routing applies). Simulated: the providers' compute (y = 2x on a small
FP32 vector; a cheater adds its own random noise to a share of its answers; a FIFO server with lognormal
service times), one-way latency, the gossip delay of a report to the ledger, and the
workload (Poisson arrivals spread over the clients).

    swarm simnet cheater --verify-fraction 0.01 --verify-fraction 0.02 \
        --verify-fraction 0.05 --seeds 5
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from swarm._errors import DeadlineExceededError, SwarmError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._types import Digest
from swarm.client import Verifier, send_verified
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit, sign_response
from swarm.routing import Router, RoutingOptions
from swarm.scheduler import Candidate
from swarm.simnet._vloop import VirtualClock, run_virtual
from swarm.staking import Genesis, GenesisAccount, Ledger, Outcome, Params, eligible

__all__ = ["CheaterResult", "CheaterSettings", "cheater_table", "run_cheater"]

_DIGEST = Digest.of(b"simnet-cheater:model")
_WIDTH = 4


@dataclass(frozen=True, slots=True)
class CheaterSettings:
    providers: int = 20
    cheaters: int = 2
    # Share of its requests a cheater answers wrongly.
    cheat_rate: float = 0.1
    verify_fraction: float = 0.02
    # Requests per second, all clients together (Poisson).
    rate: float = 20.0
    # Most virtual seconds of workload; the run stops earlier once every cheater is
    # excluded and `after` more seconds have passed.
    duration: float = 3600.0
    after: float = 60.0
    clients: int = 4
    latency_ms: float = 20.0
    # Mean service time of one request (a FIFO server per provider): at 20 requests/s over
    # 20 providers they work at ~20%, so the scheduler spreads work and cheaters get their
    # share (at 50 ms the scheduler keeps most work on a few fast providers).
    service_ms: float = 200.0
    # Seconds from a report to the ledger holding it (gossip).
    gossip_s: float = 1.0
    stake: int = 1000
    min_stake: int = 1
    timeout: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.cheaters < self.providers - 1:
            raise ValueError("cheaters must leave at least two honest providers")
        if not 0.0 <= self.cheat_rate <= 1.0 or not 0.0 <= self.verify_fraction <= 1.0:
            raise ValueError("cheat_rate and verify_fraction are shares in [0, 1]")


@dataclass(slots=True)
class CheaterResult:
    settings: CheaterSettings
    requests: int = 0
    # Copies and referee requests verification sent (Verifier.verified + .mismatches).
    extra_requests: int = 0
    # Calls providers received (first attempts, retries, copies, referees).
    calls: int = 0
    failed: int = 0
    # Wrong answers the cheaters computed (any request, copies included).
    cheated: int = 0
    # Calls each cheater received (first attempts, copies, referees), per cheater index.
    cheater_calls: dict[int, int] = field(default_factory=dict)
    # Wrong answers clients received as their result, per cheater index.
    wrong_delivered: dict[int, int] = field(default_factory=dict)
    # Virtual seconds from the workload's start to each cheater's exclusion (None: never).
    excluded_at: dict[int, float | None] = field(default_factory=dict)
    # Honest providers the ledger slashed (must stay empty).
    honest_slashed: list[int] = field(default_factory=list)
    reports: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    virtual_s: float = 0.0
    wall_s: float = 0.0

    @property
    def wrong_total(self) -> int:
        return sum(self.wrong_delivered.values())

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0

    def row(self) -> dict[str, object]:
        s = self.settings
        return {
            "verify_fraction": s.verify_fraction, "requests": self.requests,
            "extra_requests": self.extra_requests, "calls": self.calls,
            "extra_share": self.extra_requests / max(1, self.requests),
            "excluded_at_s": [self.excluded_at.get(i) for i in range(s.cheaters)],
            "wrong_delivered": [self.wrong_delivered.get(i, 0) for i in range(s.cheaters)],
            "cheater_calls": [self.cheater_calls.get(i, 0) for i in range(s.cheaters)],
            "cheated": self.cheated, "reports": self.reports,
            "honest_slashed": self.honest_slashed, "failed": self.failed,
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "virtual_s": round(self.virtual_s, 1), "wall_s": round(self.wall_s, 1),
        }


def _identity(seed: int, index: int) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"simnet-cheater:{seed}:{index}".encode()).digest())


class _Provider:
    def __init__(self, identity: Identity, index: int, cheater: bool, rng: random.Random,
                 settings: CheaterSettings, result: CheaterResult) -> None:
        self.identity, self.index, self.cheater = identity, index, cheater
        self.rng, self.settings, self.result = rng, settings, result
        self.busy_until = 0.0

    async def serve(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        loop = asyncio.get_running_loop()
        if self.cheater:
            calls = self.result.cheater_calls
            calls[self.index] = calls.get(self.index, 0) + 1
        service = self.settings.service_ms / 1000 * self.rng.lognormvariate(0.0, 0.3)
        start = max(loop.time(), self.busy_until)
        self.busy_until = start + service
        await asyncio.sleep(self.busy_until - loop.time())
        x = np.frombuffer(request.raw_input_contents[0], "<f4")
        y = (x * np.float32(2)).astype("<f4")
        if self.cheater and self.rng.random() < self.settings.cheat_rate:
            # Noise of its own: two cheaters never agree on a wrong answer (colluders who
            # did could outvote an honest provider in a triple: see the README).
            noise = np.asarray([self.rng.gauss(0.0, 1.0) for _ in range(_WIDTH)], "<f4")
            y = (y + noise).astype("<f4")
            self.result.cheated += 1
        response = pb.ModelInferResponse(model_name=request.model_name,
                                         model_version=str(_DIGEST), id=request.id)
        response.outputs.add(name="y", datatype="FP32", shape=[1, _WIDTH])
        response.raw_output_contents.append(y.tobytes())
        sign_response(self.identity, request, response)
        return response


def run_cheater(settings: CheaterSettings, *,
                progress: Callable[[str], None] | None = None) -> CheaterResult:
    """Simulate `settings` in virtual time; deterministic for its seed (module docstring)."""
    result = CheaterResult(settings)
    wall = time.perf_counter()
    log = logging.getLogger("swarm.client.verify")
    level = log.level
    log.setLevel(logging.ERROR)  # every report would log a line
    try:
        result.virtual_s = run_virtual(_run(settings, result, progress))
    finally:
        log.setLevel(level)
    result.wall_s = time.perf_counter() - wall
    return result


async def _run(s: CheaterSettings, result: CheaterResult,
               progress: Callable[[str], None] | None) -> float:
    loop = asyncio.get_running_loop()
    clock = VirtualClock.current()
    rng = random.Random(f"simnet-cheater:{s.seed}")
    identities = [_identity(s.seed, i) for i in range(s.providers)]
    # The first `cheaters` indexes cheat (their keys are random, so their place is too).
    providers = {ident.peer_id: _Provider(ident, i, i < s.cheaters,
                                          random.Random(rng.getrandbits(64)), s, result)
                 for i, ident in enumerate(identities)}
    timekeeper = _identity(s.seed, -1).peer_id
    genesis = Genesis(Params(name="simnet-cheater", timekeeper=timekeeper),
                      tuple(GenesisAccount(i.peer_id, 0, s.stake) for i in identities))
    ledger = Ledger(genesis)
    start = loop.time()

    def routable() -> PeerView:
        view = PeerView()
        for ident in identities:
            if not eligible(ledger.state, ident.peer_id, s.min_stake):
                continue
            advert = Advert(peer_id=ident.peer_id, endpoints=("sim:0",),
                            models=(ModelOffer(_DIGEST, "sim/model"),), sequence=1,
                            timestamp=clock.time(), ttl=300.0)
            view, verdict = admit(view, advert, now=clock.monotonic(), wall=clock.time())
            assert verdict.ok, verdict
        return view

    current = [routable()]
    pending: set[asyncio.Task[None]] = set()

    async def deliver(wire: bytes) -> None:
        await asyncio.sleep(s.gossip_s)
        try:
            outcome = ledger.receive(wire)
        except SwarmError:
            return
        if outcome is Outcome.FAULT:
            current[0] = routable()  # who routing may send work to changed
            for peer, p in providers.items():
                excluded = not eligible(ledger.state, peer, s.min_stake)
                if excluded and p.cheater and result.excluded_at.get(p.index) is None:
                    result.excluded_at[p.index] = loop.time() - start
                    if progress is not None:
                        progress(f"t={loop.time() - start:7.1f}s cheater {p.index} slashed "
                                 "and excluded")
                if excluded and not p.cheater and p.index not in result.honest_slashed:
                    result.honest_slashed.append(p.index)

    async def report(wire: bytes) -> None:
        result.reports += 1
        task = loop.create_task(deliver(wire))
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def call(candidate: Candidate, request: pb.ModelInferRequest,
                   timeout: float) -> pb.ModelInferResponse:
        result.calls += 1
        one_way = s.latency_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(one_way * (0.8 + 0.4 * net.random()))
                response = await providers[candidate.peer].serve(request)
                await asyncio.sleep(one_way * (0.8 + 0.4 * net.random()))
                return response
        except TimeoutError:
            raise DeadlineExceededError(f"{candidate.peer.short}: deadline") from None

    net = random.Random(rng.getrandbits(64))
    options = RoutingOptions(timeout=s.timeout, hedge=False)
    clients = []
    for _ in range(s.clients):
        router = Router(lambda: current[0], rng=random.Random(rng.getrandbits(64)),
                        clock=clock, caller=call)
        verifier = Verifier(
            fraction=s.verify_fraction, rng=random.Random(rng.getrandbits(64)), report=report,
            chain=genesis.chain, head=lambda peer: ledger.state.account(peer).seq,
            eligible=lambda peer: eligible(ledger.state, peer, s.min_stake),
            slashing=genesis.params.slashing)
        clients.append((router, verifier))

    inputs_rng = random.Random(rng.getrandbits(64))

    async def one(index: int) -> None:
        router, verifier = clients[index % len(clients)]
        x = np.asarray([inputs_rng.uniform(-1, 1) for _ in range(_WIDTH)], "<f4")
        request = pb.ModelInferRequest(model_name="sim/model", model_version=str(_DIGEST),
                                       id=f"{inputs_rng.getrandbits(128):032x}")
        request.inputs.add(name="x", datatype="FP32", shape=[1, _WIDTH])
        request.raw_input_contents.append(x.tobytes())
        sent = loop.time()
        result.requests += 1
        try:
            routed = await send_verified(router, request, _DIGEST, 1, options, verifier)
        except SwarmError:
            result.failed += 1
            return
        result.latencies.append(loop.time() - sent)
        y = np.frombuffer(routed.response.raw_output_contents[0], "<f4")
        if not np.array_equal(y, (x * np.float32(2)).astype("<f4")):
            index_of = providers[routed.peer].index
            result.wrong_delivered[index_of] = result.wrong_delivered.get(index_of, 0) + 1

    arrivals = random.Random(rng.getrandbits(64))
    built = [0.0]
    done_at: float | None = None
    next_progress = 600.0
    async with asyncio.TaskGroup() as tg:
        n = 0
        while loop.time() - start < s.duration:
            await asyncio.sleep(arrivals.expovariate(s.rate))
            tg.create_task(one(n))
            n += 1
            now = loop.time() - start
            if done_at is None and len(result.excluded_at) == s.cheaters:
                done_at = now
            if done_at is not None and now - done_at >= s.after:
                break
            if now - built[0] >= 60.0:  # adverts are re-published (their TTL is 300 s)
                current[0], built[0] = routable(), now
            if progress is not None and now >= next_progress:
                next_progress += 600.0
                progress(f"t={now:7.1f}s {result.requests} requests, "
                         f"{len(result.excluded_at)}/{s.cheaters} cheaters excluded")
    for task in list(pending):
        await task
    result.extra_requests = sum(v.verified + v.mismatches for _, v in clients)
    for i in range(s.cheaters):
        result.excluded_at.setdefault(i, None)
    return loop.time() - start


def cheater_table(results: list[CheaterResult]) -> str:
    """A markdown table, one row per verification fraction, aggregated over seeds: the
    median and worst time to exclusion over every cheater of every seed, wrong answers
    delivered per cheater before exclusion (mean, worst), extra requests, p50 and p99."""
    by_fraction: dict[float, list[CheaterResult]] = {}
    for r in results:
        by_fraction.setdefault(r.settings.verify_fraction, []).append(r)
    lines = ["| verify fraction | seeds | excluded (of cheaters) | time to exclusion s: "
             "median / worst | wrong answers delivered per cheater: mean / worst | "
             "extra requests | p50 ms | p99 ms | honest slashed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for fraction, runs in sorted(by_fraction.items()):
        times = [t for r in runs for t in r.excluded_at.values()]
        caught = [t for t in times if t is not None]
        wrong = [r.wrong_delivered.get(i, 0) for r in runs for i in range(r.settings.cheaters)]
        requests = sum(r.requests for r in runs)
        extra = sum(r.extra_requests for r in runs)
        latencies = [x for r in runs for x in r.latencies]
        p50, p99 = ((float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
                    if latencies else (0.0, 0.0))
        median = f"{float(np.median(caught)):.0f}" if caught else "-"
        worst = "never" if len(caught) < len(times) else f"{max(caught):.0f}"
        lines.append(
            f"| {fraction:.0%} | {len(runs)} | {len(caught)}/{len(times)} | {median} / {worst} "
            f"| {np.mean(wrong) if wrong else 0:.1f} / {max(wrong, default=0)} "
            f"| {extra / max(1, requests):.1%} | {p50:.0f} | {p99:.0f} "
            f"| {sum(len(r.honest_slashed) for r in runs)} |")
    return "\n".join(lines)
