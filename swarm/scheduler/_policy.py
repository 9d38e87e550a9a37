"""The routing policy: a pure function from (peer view, request, observations, rng) to candidates.

`choose` filters the providers of a digest (advert not expired, an endpoint,
not draining, stake hook, circuit breaker, price cap), scores the rest by
expected latency and price, and returns them best first: the first drawn at
random among the near-best, weighted by score (so that equal providers share the
load and clients sharing a view do not all herd onto one provider), the rest by
score, for failover. A small share of first attempts explores instead: it goes to
a provider this client has not measured lately, if its advert makes it a
contender (`SchedulerConfig.explore`).

Expected latency at a provider, for a request of `items` items::

    work     = items * per_item
    expected = rtt + wait + work
    wait     = advertised * work                  queue in the advert, drained since
             + in_flight_weight * own_work         our requests sent there since the advert
             + surprise                            what we keep seeing and cannot explain

This is "rtt + (queue depth + 1) x per-item service time" made to hold up when
many clients share providers and adverts are seconds old:

- `per_item` is the execution time per item the provider reported in its
  answers to us for this model, else 1 / the items_per_second it advertises, else a default.
- `advertised` is the advert's queue depth for the model, less what the
  provider has worked off since the advert at its own speed (queued requests
  are taken to be the size of this one). Adverts are seconds old; a queue
  turns over in tens of milliseconds, so only a deep queue outlives its advert.
  When the provider's last answer to us is newer than its advert, the depth it
  reported then (`swarm_queue_depth`) replaces the advert's, less our requests
  still in flight (they count in `own_work`).
- `own_work` is the work of our requests in flight to the provider that were
  sent after its advert (older ones are in the advertised depth), or all of them
  after a reported depth. It counts `in_flight_weight` times: while ours wait,
  other clients send there too.
- `surprise` is the EWMA of (observed - expected) latency of our answers from
  that provider, fading when not refreshed: the load from other clients.

Score, lower is better, with w the preference's latency weight::

    w * ln(expected / best expected) + (1 - w) * ln((price + 1) / (cheapest + 1))

Each criterion is normalized by the best candidate's value, as a ratio: with
w = 0.5 a provider twice as slow must be more than twice as cheap to win, and
a cheap provider's score keeps rising with its queue, so load spills over
instead of piling up there. w = 0 (PRICE) weighs latency only to break ties:
give such requests a deadline, since candidates expected to miss it rank last.

A generation stream (`Request.generation`, its cost in tokens) is estimated by tokens at
a continuous-batching provider instead (swarm/scheduler/_generation.py: waiting for a
sequence slot, prefill, decode at the per-sequence rate); the score and the rest are the
same.

At scale (`SchedulerConfig.max_considered`), `choose` estimates only a bounded
set of providers: those that answered this client most recently (within
`recent_window`), up to half of the set, and a random sample for the rest
(power of d choices). Scoring thousands of providers per request
costs milliseconds; a client needs a few good ones and fresh samples to find
better. Only when no sampled provider qualifies does it look at all of them.
"""

from __future__ import annotations

import heapq
import math
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

from swarm._errors import NoProviderError
from swarm._types import Digest, PeerId
from swarm.protocol import PeerEntry, PeerView
from swarm.scheduler._generation import (
    GenerationPolicy,
    TokenCost,
    estimate_generation,
    typical_generation,
)
from swarm.scheduler._observations import Observations, ObservationSnapshot, PeerStats

__all__ = ["Candidate", "Preference", "Request", "SchedulerConfig", "choose"]


@dataclass(frozen=True, slots=True)
class Preference:
    """How to trade latency against price: `latency_weight` 1 = fastest, 0 = cheapest.

    Presets: `Preference.LATENCY`, `Preference.PRICE`; `Preference(0.7)` is a balance.
    The other criterion always breaks ties.
    """

    latency_weight: float = 1.0

    LATENCY: ClassVar[Preference]
    PRICE: ClassVar[Preference]

    def __post_init__(self) -> None:
        if not 0.0 <= self.latency_weight <= 1.0:  # also refuses NaN
            raise ValueError(f"latency_weight must be in [0, 1], got {self.latency_weight}")

    @classmethod
    def parse(cls, text: str) -> Preference:
        """`latency`, `price`, or a latency weight such as `0.7` (CLI flags, config files)."""
        if text == "latency":
            return cls.LATENCY
        if text == "price":
            return cls.PRICE
        try:
            return cls(float(text))
        except ValueError:
            raise ValueError(
                f"preference must be 'latency', 'price' or a weight in [0, 1], got {text!r}"
            ) from None


Preference.LATENCY = Preference(1.0)
Preference.PRICE = Preference(0.0)


@dataclass(frozen=True, slots=True)
class Request:
    """What the policy needs to know about one request."""

    digest: Digest
    # Items (rows) in the request; service time and per-item prices scale with it.
    items: int = 1
    # Absolute deadline on the monotonic clock that `now` is read from (None: none).
    # Absolute so that retries and hedges of one request share it; the gRPC timeout of
    # an attempt is deadline - now.
    deadline: float | None = None
    # Most this request may cost, in micros (`Price.cost(items)`); None: no cap.
    max_price: float | None = None
    preference: Preference = Preference.LATENCY
    # Peers not to return (already tried by this request, or the hedge's first peer).
    exclude: frozenset[PeerId] = frozenset()
    # A first attempt, which may explore (`SchedulerConfig.explore`): the Router sets it on
    # the first attempt of a request, never on its retries or hedge.
    explore: bool = False
    # A generation stream: its cost in tokens; estimated by tokens at continuous-batching
    # providers (swarm/scheduler/_generation.py), not as `items` rows. None: a tensor request.
    generation: TokenCost | None = None

    def __post_init__(self) -> None:
        if self.items < 1:
            raise ValueError(f"items must be at least 1, got {self.items}")
        if self.max_price is not None and not self.max_price >= 0:
            raise ValueError(f"max_price must not be negative, got {self.max_price}")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    # Most candidates returned (the pick first, then the failover order).
    candidates: int = 8
    # The first pick is drawn at random from the best `spread_pool` candidates within
    # `spread_slack` of the best one on what the preference weighs (expected latency,
    # price or both), each weighted by how close it is to the best: one `spread_tie`
    # times worse is drawn 1/e as often (1.5: 10% worse, 0.79 as often; 1.5x worse, 0.37).
    # Near-equals share the load instead of the one estimated a little better taking it
    # all (herding), and no work goes to a provider far slower, or dearer, than the best.
    # spread_pool 1 always takes the best.
    spread_pool: int = 8
    spread_slack: float = 1.5
    spread_tie: float = 1.5
    # Seconds after which a provider's measured RTT and service time count half toward the
    # typical provider's: one slow answer must not keep a provider out of rotation forever.
    stale_half_life: float = 5.0
    # A provider's measured service time counts as samples / (samples + service_prior)
    # of its estimate, the typical provider's as the rest: a single sample, a quarter.
    service_prior: float = 3.0
    # Our own in-flight work at a provider counts this many times in its queue estimate:
    # others send there too while ours wait. 1 is exact for a lone client; 2 cut p99 by
    # 14% with 8 clients in bench/scheduler_bench.py and costs a lone client nothing.
    in_flight_weight: float = 2.0
    # Share of first attempts (`Request.explore`) sent to a provider this client knows
    # nothing fresh about: never answered us (`sampled_at`), or not for `explore_after`
    # seconds, with nothing of ours in flight there; only one that what it advertises
    # (speed, queue, price; our RTT to it if measured) puts within `spread_slack` of the best
    # estimate. Otherwise a provider measured slow once, or never tried while the one we
    # know is good enough, keeps no traffic: new capacity would stay unused.
    explore: float = 0.05
    explore_after: float = 5.0
    # Round-trip seconds assumed for a peer never measured.
    default_rtt: float = 0.05
    # Seconds per item assumed when a peer neither reported nor advertises a speed.
    default_service: float = 0.1
    # Stake requirement (staking comes later): False excludes the peer; None allows all.
    stake_ok: Callable[[PeerId], bool] | None = None
    # Most providers estimated per call (module docstring): up to half of them the ones
    # used most recently, a random sample for the rest. None: every provider (exact, and
    # O(providers) per call: fine for tens, milliseconds at thousands).
    max_considered: int | None = None
    # Seconds since its last answer during which a provider counts as recently used.
    recent_window: float = 10.0
    # Providers that may refuse one request past their queue bound (swarm.scheduler
    # choose_attempt, provider-side admission) before its last attempt must be queued.
    # 0: never allow a refusal.
    max_refusals: int = 2
    # How generation streams are estimated (`Request.generation`).
    generation: GenerationPolicy = field(default_factory=GenerationPolicy)

    def __post_init__(self) -> None:
        if self.max_refusals < 0:
            raise ValueError(f"max_refusals must not be negative, got {self.max_refusals}")
        if self.candidates < 1 or self.spread_pool < 1:
            raise ValueError("candidates and spread_pool must be at least 1")
        if self.max_considered is not None and self.max_considered < 2:
            raise ValueError(f"max_considered must be at least 2, got {self.max_considered}")
        if not self.recent_window >= 0:
            raise ValueError(f"recent_window must not be negative, got {self.recent_window}")
        if not self.stale_half_life > 0:
            raise ValueError(f"stale_half_life must be positive, got {self.stale_half_life}")
        if not self.spread_slack >= 1 or not self.spread_tie > 1:
            raise ValueError(f"need spread_slack >= 1 and spread_tie > 1, got "
                             f"{self.spread_slack}, {self.spread_tie}")
        if not 0 <= self.explore <= 1 or not self.explore_after >= 0:
            raise ValueError(f"explore must be in [0, 1] and explore_after not negative, got "
                             f"{self.explore}, {self.explore_after}")
        if not self.service_prior >= 0:
            raise ValueError(f"service_prior must not be negative, got {self.service_prior}")
        if not self.in_flight_weight >= 0:
            raise ValueError(f"in_flight_weight must not be negative, got {self.in_flight_weight}")
        if not (self.default_rtt >= 0 and self.default_service > 0):
            raise ValueError("need default_rtt >= 0 and default_service > 0")


@dataclass(frozen=True, slots=True)
class Candidate:
    peer: PeerId
    # gRPC address to send the request to (the advert's first endpoint).
    endpoint: str
    # Seconds from sending to the answer (module docstring); pass it back to
    # `Observations.record_success(expected=...)`.
    expected_latency: float
    # What this request costs there, in micros.
    price: float
    # Lower is better; 0 is the best of this call's candidates on both criteria
    # (module docstring). Compare scores within one call only.
    score: float
    # The expected latency fits the request's deadline.
    on_time: bool = True
    # Requests ahead of this one in the estimate (advertised, drained, plus our own).
    queue: float = 0.0
    # Picked to explore (`SchedulerConfig.explore`), not for its score.
    explored: bool = False
    # The provider may refuse this attempt past its queue bound (`choose_attempt`).
    admissible: bool = False
    # A generation stream's expected seconds to its first token (`Request.generation`);
    # pass it to `Router.watch_stream`, which teaches the policy what it cannot see.
    first_token: float | None = None


_DEFAULT = SchedulerConfig()


def choose(view: PeerView, request: Request, obs: Observations | ObservationSnapshot,
           rng: random.Random, now: float, config: SchedulerConfig = _DEFAULT) -> list[Candidate]:
    """Providers for `request`, best first (at most `config.candidates`).

    Pure: reads `view` and `obs` (a live `Observations` is only read), draws from `rng`,
    never reads a clock; `now` is on the clock of the view's `received_at`. Candidates
    expected to miss the deadline come after all that are expected to meet it.
    Raises NoProviderError, saying why, when no provider qualifies.
    """
    stats = obs.snapshot() if isinstance(obs, Observations) else obs
    serving = view.by_digest.get(request.digest, frozenset())
    if not serving:
        raise NoProviderError(f"no provider serves {request.digest}; {view.describe_offers()}")
    rows: list[_Row] = []
    d = config.max_considered
    if d is not None and len(serving) > d:
        sample = _sample(view, serving, stats, rng, now, d, config.recent_window)
        rows, _, _ = _evaluate(sample, stats, request, now, config)
    if not rows:  # all of them: no sampling, or nothing sampled qualified
        entries = view.providers(request.digest)
        rows, reasons, cheapest = _evaluate(entries, stats, request, now, config)
        if not rows:
            raise _no_provider(request, len(entries), reasons, cheapest)
    ranked = _order(_score(rows, request, now), request.preference, rng, config)
    if request.explore and config.explore > 0 and rng.random() < config.explore:
        ranked = _explore(ranked, rows, stats, request, rng, now, config)
    return ranked[:config.candidates]


def _evaluate(entries: list[PeerEntry], stats: ObservationSnapshot, request: Request,
              now: float, config: SchedulerConfig
              ) -> tuple[list[_Row], dict[str, int], float | None]:
    """Estimates for the qualifying entries; why the others were refused; cheapest refused
    on price."""
    rows = []
    reasons: dict[str, int] = {}
    cheapest: float | None = None
    typical = _typical(entries, stats, request.digest, config)
    if request.generation is not None:
        typical = typical_generation(entries, stats, request.digest, config)
    for entry in entries:
        peer_stats = stats.get(entry.peer_id)
        price = entry.advert.price.cost(request.items)
        reason = _refusal(entry, peer_stats, request, price, now, config)
        if reason is None:
            rows.append(_estimate_any(entry, peer_stats, stats, request, price, now, config,
                                      typical))
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason == _PRICE:
            cheapest = price if cheapest is None else min(cheapest, price)
    return rows, reasons, cheapest


# Sorted peer ids per provider set: a view's set object changes only when a provider
# joins or leaves, so each is sorted once, not on every request. Keyed by identity (the
# entry holds the set, so its id is not reused): views of many clients hold equal sets,
# and a lookup by value would compare them element by element. Bounded, oldest out.
_SORTED: dict[int, tuple[frozenset[PeerId], tuple[PeerId, ...]]] = {}
_SORTED_MAX = 512
_BY_VALUE = operator.attrgetter("value")


def _sorted(peers: frozenset[PeerId]) -> tuple[PeerId, ...]:
    cached = _SORTED.get(id(peers))
    if cached is not None and cached[0] is peers:
        return cached[1]
    # Sorted, never in set order: that depends on PYTHONHASHSEED (determinism).
    ordered = tuple(sorted(peers, key=_BY_VALUE))
    if len(_SORTED) >= _SORTED_MAX:
        del _SORTED[next(iter(_SORTED))]
    _SORTED[id(peers)] = (peers, ordered)
    return ordered


def _sample(view: PeerView, serving: frozenset[PeerId], stats: ObservationSnapshot,
            rng: random.Random, now: float, size: int, window: float) -> list[PeerEntry]:
    """`size` of the providers in `serving`: recently used ones first (at most half), then
    random ones. Costs O(size) estimates and one comparison per observed peer (a client
    should forget peers it stopped using: `Observations.forget`), not O(providers)."""
    cutoff = now - window
    # The last answer with an expected latency sets surprise_at (Router always passes it).
    recent = [(s.surprise_at, peer.value, peer) for peer, s in stats.peers.items()
              if s.surprise_at >= cutoff]
    recent = [r for r in recent if r[2] in serving]
    picked = dict.fromkeys(p for _, _, p in heapq.nlargest(size // 2, recent))
    for peer in rng.sample(_sorted(serving), size):
        if len(picked) == size:
            break
        picked[peer] = None
    return sorted((view.entries[p] for p in picked), key=lambda e: e.peer_id.value)


_PRICE = "price"
# Added to prices before taking ratios, so that free providers compare finitely (micros).
_PRICE_FLOOR = 1.0
# Seconds; keeps estimates positive when a peer reports zero service time (cache hits).
_MIN_WORK = 1e-6


def _refusal(entry: PeerEntry, peer_stats: PeerStats, request: Request, price: float,
             now: float, config: SchedulerConfig) -> str | None:
    advert = entry.advert
    if entry.peer_id in request.exclude:
        return "excluded"
    if entry.expires_at <= now:
        return "expired"
    if not advert.endpoints:
        return "without endpoint"
    if advert.draining:
        return "draining"
    if config.stake_ok is not None and not config.stake_ok(entry.peer_id):
        return "without the required stake"
    if not peer_stats.available(now):
        return "circuit open"
    if request.max_price is not None and price > request.max_price:
        return _PRICE
    return None


@dataclass(frozen=True, slots=True)
class _Row:
    entry: PeerEntry
    latency: float
    price: float
    queue: float
    first_token: float | None = None  # generation streams only


def _typical(entries: list[PeerEntry], stats: ObservationSnapshot, digest: Digest,
             config: SchedulerConfig) -> tuple[float, float]:
    """Median measured (rtt, per-item service) over the providers; defaults when none measured.

    A provider we have not measured yet is assumed typical, not pessimistic: otherwise
    the first provider measured would win every pick and the others would never be tried.
    """
    rtts = sorted(r for e in entries if (r := stats.get(e.peer_id).rtt) is not None)
    services = sorted(v for e in entries
                      if (v := stats.get(e.peer_id).service_for(digest)[0]) is not None)
    rtt = rtts[len(rtts) // 2] if rtts else config.default_rtt
    service = services[len(services) // 2] if services else config.default_service
    return rtt, service


def _estimate(entry: PeerEntry, peer_stats: PeerStats, stats: ObservationSnapshot,
              request: Request, price: float, now: float, config: SchedulerConfig,
              typical: tuple[float, float]) -> _Row:
    advert = entry.advert
    offer = advert.offer(request.digest)
    per_item, sampled_at, samples = peer_stats.service_for(request.digest)
    if per_item is None:
        speed = offer.items_per_second if offer is not None else 0.0
        per_item = 1.0 / speed if speed > 0 else typical[1]
    else:
        # Few samples, or none for a while: trust them less, the typical provider more
        # (one unlucky answer must not make an equal provider look slow until retried).
        trust = (0.5 ** (max(0.0, now - sampled_at) / config.stale_half_life)
                 * samples / (samples + config.service_prior))
        per_item = trust * per_item + (1 - trust) * typical[1]
    work = max(_MIN_WORK, request.items * per_item)
    depth = offer.queue_depth if offer is not None else advert.queue_depth
    since = own_since = entry.received_at
    if peer_stats.depth is not None and peer_stats.depth_at > since:  # its last answer: fresher
        # Ours still in flight were sent before it and are mostly in that queue: they count
        # below with the rest of ours, so only the others' requests count here.
        since, own_since = peer_stats.depth_at, -math.inf
        depth = max(0, peer_stats.depth - (peer_stats.outstanding - peer_stats.outstanding_since(since)))
    advertised = max(0.0, depth - max(0.0, now - since) / work)
    own_work = peer_stats.items_in_flight(since=own_since) * per_item
    surprise = peer_stats.surprise_now(now, stats.config.surprise_half_life)
    wait = advertised * work + config.in_flight_weight * own_work + surprise
    if peer_stats.rtt is None:
        rtt = typical[0]
    else:  # any answer refreshes the RTT, whatever its model
        fresh = 0.5 ** (max(0.0, now - peer_stats.sampled_at) / config.stale_half_life)
        rtt = fresh * peer_stats.rtt + (1 - fresh) * typical[0]
    return _Row(entry, rtt + max(0.0, wait) + work, price, advertised + own_work / work)


def _estimate_any(entry: PeerEntry, peer_stats: PeerStats, stats: ObservationSnapshot,
                  request: Request, price: float, now: float, config: SchedulerConfig,
                  typical: tuple[float, float]) -> _Row:
    """`_estimate`, or for a generation stream its estimate by tokens."""
    if request.generation is None:
        return _estimate(entry, peer_stats, stats, request, price, now, config, typical)
    est = estimate_generation(entry, peer_stats, request.digest, request.generation, now,
                              config, typical, stats.config.surprise_half_life)
    return _Row(entry, est.latency, price, est.ahead, est.first_token)


def _score(rows: list[_Row], request: Request, now: float) -> list[Candidate]:
    lat_lo = min(r.latency for r in rows)
    price_lo = min(r.price for r in rows) + _PRICE_FLOOR
    w = request.preference.latency_weight
    remaining = math.inf if request.deadline is None else request.deadline - now
    return [Candidate(
        peer=r.entry.peer_id, endpoint=r.entry.advert.endpoints[0], expected_latency=r.latency,
        price=r.price, on_time=r.latency <= remaining, queue=r.queue, first_token=r.first_token,
        score=w * math.log(r.latency / lat_lo) + (1 - w) * math.log((r.price + _PRICE_FLOOR) / price_lo),
    ) for r in rows]


def _order(candidates: list[Candidate], preference: Preference, rng: random.Random,
           config: SchedulerConfig) -> list[Candidate]:
    if preference.latency_weight >= 0.5:
        ranked = sorted(candidates, key=lambda c: (
            not c.on_time, c.score, c.expected_latency, c.price, c.peer.value))
    else:
        ranked = sorted(candidates, key=lambda c: (
            not c.on_time, c.score, c.price, c.expected_latency, c.peer.value))
    best = ranked[0]
    limit = best.score + math.log(config.spread_slack)
    pool = [c for c in ranked[:config.spread_pool] if c.on_time == best.on_time and c.score <= limit]
    if len(pool) >= 2:
        # Drawn at random, each as often as exp(-(score - best) / ln(spread_tie)): equals
        # share evenly, a candidate spread_tie times worse is drawn 1/e as often as the
        # best. Estimates of equal providers differ by noise (one slow answer moves an
        # EWMA for seconds); taking the best, or the better of two (power of two choices),
        # turns that noise into herding: the provider measured a little slower idles.
        temperature = math.log(config.spread_tie)
        weights = [math.exp((best.score - c.score) / temperature) for c in pool]
        pick = rng.choices(pool, weights)[0]
        ranked.remove(pick)
        ranked.insert(0, pick)
    return ranked


def _explore(ranked: list[Candidate], rows: list[_Row], stats: ObservationSnapshot,
             request: Request, rng: random.Random, now: float,
             config: SchedulerConfig) -> list[Candidate]:
    """`ranked` with a provider we know nothing fresh about first, if one might be good.

    Judged by its prior: the estimate from its advert alone (and our RTT to it), as for a
    provider never measured, against the best estimate of this call.
    """
    best = min(r.latency for r in rows)
    cheapest = min(r.price for r in rows) + _PRICE_FLOOR
    w = request.preference.latency_weight
    remaining = math.inf if request.deadline is None else request.deadline - now
    limit = math.log(config.spread_slack)
    entries = [r.entry for r in rows]
    typical = (_typical(entries, stats, request.digest, config) if request.generation is None
               else typical_generation(entries, stats, request.digest, config))
    pool = []
    for r in rows:
        s = stats.get(r.entry.peer_id)
        if request.generation is not None:
            if s.streaming or now - s.stream_rate_for(request.digest)[1] < config.explore_after:
                continue
        elif s.in_flight or now - s.service_for(request.digest)[1] < config.explore_after:
            continue
        prior = _estimate_any(r.entry, PeerStats(rtt=s.rtt), stats, request, r.price, now,
                              config, typical).latency
        score = w * math.log(max(prior, best) / best) + (1 - w) * math.log(
            (r.price + _PRICE_FLOOR) / cheapest)
        if prior <= remaining and score <= limit:
            pool.append(r.entry.peer_id)
    if not pool:
        return ranked
    peer = rng.choice(pool)  # rows are in peer order: deterministic for a seed
    pick = next(c for c in ranked if c.peer == peer)
    ranked = [c for c in ranked if c.peer != peer]
    return [replace(pick, explored=True), *ranked]


def _no_provider(request: Request, serving: int, reasons: dict[str, int],
                 cheapest: float | None) -> NoProviderError:
    what = f"{serving} provider{'s serve' if serving != 1 else ' serves'} {request.digest}"
    if set(reasons) == {_PRICE}:
        return NoProviderError(f"{what} but all ask more than max_price {request.max_price:g} "
                               f"(cheapest {cheapest:g})", reasons=reasons, cheapest=cheapest)
    parts = []
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        if reason == _PRICE:
            reason = f"above max_price {request.max_price:g} (cheapest {cheapest:g})"
        parts.append(f"{count} {reason}")
    return NoProviderError(f"{what} but none can take it: {', '.join(parts)}", reasons=reasons,
                           cheapest=cheapest)
