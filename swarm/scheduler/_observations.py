"""What this client has seen of each peer: latencies, outstanding requests, failures.

`Observations` is a mutable container over an immutable map, so `snapshot()`
is O(1) and the policy reads a frozen `ObservationSnapshot`. Nothing here reads
a clock: every method takes `now` (monotonic seconds, the same clock as the
peer view's `received_at`).

Circuit breaker per peer, deterministic (no jitter)::

    CLOSED --(failure_threshold consecutive failures)--> OPEN for ban
    OPEN --(ban elapsed)--> HALF_OPEN (one probe request at a time)
    HALF_OPEN --success--> CLOSED
    HALF_OPEN --failure--> OPEN for twice the last ban (capped at max_ban)

The ban doubles on every re-open; it starts again from `base_ban` once a peer
has stayed closed for `ban_reset_after` seconds, so a flapping peer keeps
escalating while a peer that recovered for good is forgiven.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import immutables

from swarm._types import Digest, PeerId

__all__ = [
    "BreakerState",
    "Failure",
    "ObservationConfig",
    "ObservationSnapshot",
    "Observations",
    "PeerStats",
]


class Failure(enum.Enum):
    """Why a request to a peer failed (only failures that are the peer's fault)."""

    TRANSPORT = "transport"  # connection refused or reset, no answer
    UNAVAILABLE = "unavailable"  # UNAVAILABLE: draining, shutting down
    OVERLOADED = "overloaded"  # RESOURCE_EXHAUSTED: queue full
    DEADLINE = "deadline"  # DEADLINE_EXCEEDED: too slow for the deadline we gave it
    NOT_FOUND = "not_found"  # NOT_FOUND: it no longer serves what it advertised
    ERROR = "error"  # INTERNAL and anything else the peer got wrong

    @classmethod
    def from_code(cls, code: str) -> Failure | None:
        """Map a gRPC status name to a failure kind; None when the peer is not to blame."""
        if code in ("INVALID_ARGUMENT", "CANCELLED", "OK"):
            return None
        return _FROM_CODE.get(code, cls.ERROR)


_FROM_CODE = {
    "UNAVAILABLE": Failure.UNAVAILABLE,
    "RESOURCE_EXHAUSTED": Failure.OVERLOADED,
    "DEADLINE_EXCEEDED": Failure.DEADLINE,
    "NOT_FOUND": Failure.NOT_FOUND,
}


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class ObservationConfig:
    # Weight of the newest sample in the RTT EWMA.
    rtt_alpha: float = 0.2
    # Weight of the newest sample in the per-item service-time EWMA.
    service_alpha: float = 0.2
    # Per-item service samples kept per (peer, model); the estimate is their median, so one
    # slow answer (a GC pause, a busy CPU) does not make an equal provider look slow for
    # seconds, and then idle because it is not tried again.
    service_window: int = 5
    # Weight of the newest sample in the end-to-end latency EWMA.
    latency_alpha: float = 0.2
    # Weight of the newest sample in the EWMA of surprise (observed minus expected latency).
    surprise_alpha: float = 0.1
    # Seconds for an unrefreshed surprise to fall by half (so a peer we stopped using because
    # it surprised us badly gets tried again).
    surprise_half_life: float = 2.0
    # Latencies kept per peer for the p95 estimate (a ring of the most recent ones).
    latency_window: int = 64
    # Fewer samples than this and `p95()` answers None (too few to hedge on).
    p95_min_samples: int = 8
    # Consecutive failures that open a closed breaker.
    failure_threshold: int = 3
    # First ban, in seconds; each re-open doubles it.
    base_ban: float = 1.0
    # Longest ban, in seconds.
    max_ban: float = 60.0
    # Seconds closed without an opening after which the next ban starts at base_ban again.
    ban_reset_after: float = 60.0
    # Failures younger than this many seconds count as recent.
    failure_window: float = 60.0

    def __post_init__(self) -> None:
        for name in ("rtt_alpha", "service_alpha", "latency_alpha", "surprise_alpha"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.latency_window < 1 or self.p95_min_samples < 1 or self.service_window < 1:
            raise ValueError("latency_window, p95_min_samples and service_window must be at "
                             "least 1")
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not 0 < self.base_ban <= self.max_ban:
            raise ValueError("need 0 < base_ban <= max_ban")
        if self.surprise_half_life <= 0:
            raise ValueError("surprise_half_life must be positive")
        if self.ban_reset_after < 0 or self.failure_window < 0:
            raise ValueError("ban_reset_after and failure_window must not be negative")


def _median(values: tuple[float, ...]) -> float:
    """The median (the upper middle one of an even count)."""
    return sorted(values)[len(values) // 2]


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Everything observed about one peer (frozen; `Observations` replaces it on each event)."""

    # Round-trip time EWMA in seconds (None: never measured).
    rtt: float | None = None
    # Per-item execution time EWMA in seconds, as reported by the peer (None: never reported),
    # over all its models; and per model, for the answers recorded with their digest (a
    # peer serves models of very different costs: one EWMA over all of them makes the
    # peer look slow for a light model right after it answered a heavy one).
    service: float | None = None
    # (digest, its most recent per-item samples, oldest first, when last sampled) per model.
    services: tuple[tuple[Digest, tuple[float, ...], float], ...] = ()
    # End-to-end latency EWMA in seconds, as seen by this client.
    latency: float | None = None
    # EWMA of observed minus expected latency (seconds), and when it was last updated: the
    # load this client cannot see (other clients' requests since the last advert).
    surprise: float = 0.0
    surprise_at: float = -math.inf
    # Requests waiting at the peer for the model, as its last answer to us reported
    # (`swarm_queue_depth`), and when that answer came (None, -inf: never reported). Fresher
    # than the advert's depth whenever we use the peer more often than it advertises.
    depth: int | None = None
    depth_at: float = -math.inf
    # The most recent end-to-end latencies, oldest first.
    latencies: tuple[float, ...] = ()
    # (start time, items) of this client's requests in flight to the peer, oldest first.
    in_flight: tuple[tuple[float, int], ...] = ()
    # Generation streams (swarm.scheduler._generation): (digest, the most recent tokens/s
    # one of our streams decoded at, oldest first, when last sampled) per model, and
    # (start time, work in tokens, when its first token is due: inf once it came or
    # when no estimate was given) of our streams still open there.
    stream_rates: tuple[tuple[Digest, tuple[float, ...], float], ...] = ()
    streaming: tuple[tuple[float, float, float], ...] = ()
    # EWMA of (observed - expected) seconds to a stream's first token, and when last
    # updated: the wait at the provider its adverts do not show (other clients' streams
    # since, or an advert that understates its load). Fades like `surprise`.
    stream_surprise: float = 0.0
    stream_surprise_at: float = -math.inf
    successes: int = 0
    # When the last success was recorded (the age of rtt/service/latency).
    sampled_at: float = -math.inf
    failures: int = 0
    # Times of failures, oldest first (pruned to failure_window on each new failure).
    failure_times: tuple[float, ...] = ()
    last_failure: Failure | None = None
    consecutive_failures: int = 0
    # OPEN or CLOSED; HALF_OPEN is OPEN whose ban has elapsed (see `breaker`).
    opened: bool = False
    open_until: float = 0.0
    # Openings since the ban was last reset; the next ban is base_ban * 2**bans.
    bans: int = 0
    closed_since: float = -math.inf
    # A half-open probe is in flight.
    probing: bool = False

    def service_for(self, digest: Digest) -> tuple[float | None, float, int]:
        """(per-item seconds, when last sampled, samples) for `digest`'s model: the median of
        its recent samples; (None, -inf, 0) when answers were recorded per model but none for
        this one; the peer-wide EWMA, `sampled_at` and `successes` when none were recorded
        per model."""
        if not self.services:
            return self.service, self.sampled_at, self.successes
        return next(((_median(v), at, len(v)) for d, v, at in self.services if d == digest),
                    (None, -math.inf, 0))

    def stream_rate_for(self, digest: Digest) -> tuple[float | None, float, int]:
        """(tokens/s per sequence, when last sampled, samples) our streams of `digest`'s
        model measured at this peer: the median of the recent ones; (None, -inf, 0) if none."""
        return next(((_median(v), at, len(v)) for d, v, at in self.stream_rates if d == digest),
                    (None, -math.inf, 0))

    @property
    def outstanding(self) -> int:
        return len(self.in_flight)

    def outstanding_since(self, t: float) -> int:
        """Requests in flight that were sent after time `t`."""
        return sum(1 for start, _ in self.in_flight if start > t)

    def items_in_flight(self, since: float = -math.inf) -> int:
        """Items of the requests in flight that were sent after time `since`."""
        return sum(items for start, items in self.in_flight if start > since)

    def stream_surprise_now(self, now: float, half_life: float) -> float:
        """`stream_surprise`, halved for every `half_life` seconds without a new sample."""
        if self.stream_surprise_at == -math.inf:
            return 0.0
        return self.stream_surprise * math.exp2(-max(0.0, now - self.stream_surprise_at)
                                                / half_life)

    def surprise_now(self, now: float, half_life: float) -> float:
        """The surprise EWMA, halved for every `half_life` seconds without a new sample."""
        if self.surprise_at == -math.inf:
            return 0.0
        return self.surprise * math.exp2(-max(0.0, now - self.surprise_at) / half_life)

    def breaker(self, now: float) -> BreakerState:
        if not self.opened:
            return BreakerState.CLOSED
        return BreakerState.HALF_OPEN if now >= self.open_until else BreakerState.OPEN

    def available(self, now: float) -> bool:
        """May a new request go to this peer? Closed, or half-open with no probe in flight."""
        state = self.breaker(now)
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self.probing)

    def recent_failures(self, now: float, window: float) -> int:
        return sum(1 for t in self.failure_times if now - t < window)

    def p95(self, min_samples: int = 8) -> float | None:
        """95th percentile of recent latencies (nearest rank), or None with too few samples."""
        n = len(self.latencies)
        if n < max(1, min_samples):
            return None
        return sorted(self.latencies)[math.ceil(0.95 * n) - 1]


_NEW = PeerStats()


def _stream(s: PeerStats, started: float, work: float) -> tuple[float, float, float] | None:
    """The open stream `start_stream` recorded at `started` with `work`."""
    work = max(0.0, work)
    return next((e for e in s.streaming if e[0] == started and e[1] == work), None)

# Most tokens/s a stream sample is taken at: a provider that holds its tokens back and
# bursts them must not look infinitely fast (its first token still comes late).
MAX_STREAM_RATE = 1e5
# Largest queue depth a peer's report is taken at: more than any node queues
# (max_queue_size defaults to 1024); keeps a hostile int64 out of the estimates' arithmetic.
MAX_REPORTED_DEPTH = 1 << 20


@dataclass(frozen=True, slots=True)
class ObservationSnapshot:
    """A frozen view of `Observations` at one moment (what the policy reads)."""

    peers: immutables.Map[PeerId, PeerStats] = field(default_factory=immutables.Map)
    config: ObservationConfig = field(default_factory=ObservationConfig)

    def get(self, peer: PeerId) -> PeerStats:
        """Stats for `peer`; a fresh `PeerStats` for a peer never seen."""
        return self.peers.get(peer, _NEW)

    def __iter__(self) -> Iterator[PeerId]:
        return iter(self.peers)

    def __len__(self) -> int:
        return len(self.peers)


class Observations:
    """Local observations per peer. Mutable, but every change takes `now`; no clock reads."""

    def __init__(self, config: ObservationConfig | None = None) -> None:
        self.config = config or ObservationConfig()
        self._peers: immutables.Map[PeerId, PeerStats] = immutables.Map()
        # The latest latencies over every peer: the hedging threshold for a peer we have
        # too few samples of (with many providers, most of them).
        self._recent: collections.deque[float] = collections.deque(
            maxlen=max(self.config.latency_window, 64))

    def snapshot(self) -> ObservationSnapshot:
        return ObservationSnapshot(self._peers, self.config)

    def get(self, peer: PeerId) -> PeerStats:
        return self._peers.get(peer, _NEW)

    def overall_p95(self) -> float | None:
        """95th percentile of this client's recent latencies over all peers (None: too few)."""
        n = len(self._recent)
        if n < max(1, self.config.p95_min_samples):
            return None
        return sorted(self._recent)[math.ceil(0.95 * n) - 1]

    def p95(self, peer: PeerId) -> float | None:
        """`peer`'s recent latency p95 (the hedging threshold), or None with too few samples."""
        return self.get(peer).p95(self.config.p95_min_samples)

    def _put(self, peer: PeerId, stats: PeerStats) -> None:
        self._peers = self._peers.set(peer, stats)

    def forget(self, peer: PeerId) -> None:
        """Drop everything about `peer` (it left the view for good)."""
        self._peers = self._peers.delete(peer) if peer in self._peers else self._peers

    def record_rtt(self, peer: PeerId, rtt: float, now: float) -> None:
        """A round-trip measurement (ping, health check, connection handshake)."""
        if rtt < 0:
            raise ValueError(f"rtt must not be negative, got {rtt}")
        s = self.get(peer)
        self._put(peer, replace(s, rtt=_ewma(s.rtt, rtt, self.config.rtt_alpha)))

    def start(self, peer: PeerId, now: float, items: int = 1) -> None:
        """A request of `items` items was sent to `peer` (outstanding until `finish`)."""
        s = self.get(peer)
        probing = s.probing or s.breaker(now) is BreakerState.HALF_OPEN
        self._put(peer, replace(s, in_flight=(*s.in_flight, (now, items)), probing=probing))

    def finish(self, peer: PeerId, now: float) -> None:
        """A request to `peer` ended (any outcome). Call once per `start`."""
        s = self.get(peer)
        # Providers answer roughly in order, so the oldest request is the one that ended.
        self._put(peer, replace(s, in_flight=s.in_flight[1:], probing=False))

    def record_success(self, peer: PeerId, latency: float, items: int, now: float, *,
                       expected: float | None = None, queued: float | None = None,
                       service: float | None = None, depth: int | None = None,
                       digest: Digest | None = None) -> None:
        """A request of `items` items answered after `latency` seconds (end to end).

        `expected` is the latency the policy predicted when it sent the request
        (`Candidate.expected_latency`); the difference teaches the policy what it cannot see.

        `queued` and `service` are the seconds the peer reports the request waited in its
        queue and executed, when the response carries them; with both, the rest of the
        latency is a round-trip sample. `depth` is the number of requests the peer reports
        waiting when it answered (the policy prefers it to an older advert's); negative
        values, from a hostile or broken peer, count as 0. `digest` is the model the request
        was for: the service time is then also learnt per model (`PeerStats.service_for`).
        """
        if latency < 0 or items < 1:
            raise ValueError(f"need latency >= 0 and items >= 1, got {latency}, {items}")
        cfg = self.config
        s = self.get(peer)
        self._recent.append(latency)
        rtt, per_item = s.rtt, s.service
        services = s.services
        if service is not None:
            sample = max(0.0, service) / items
            per_item = _ewma(per_item, sample, cfg.service_alpha)
            if digest is not None:
                recent = next((v for d, v, _ in services if d == digest), ())
                recent = (*recent[-cfg.service_window + 1:], sample) if cfg.service_window > 1 else (sample,)
                services = (*(e for e in services if e[0] != digest), (digest, recent, now))
            if queued is not None:
                rtt = _ewma(rtt, max(0.0, latency - queued - service), cfg.rtt_alpha)
        surprise, surprise_at = s.surprise, s.surprise_at
        if expected is not None:
            old = s.surprise_now(now, cfg.surprise_half_life) if surprise_at > -math.inf else None
            surprise, surprise_at = _ewma(old, latency - expected, cfg.surprise_alpha), now
        window = s.latencies[-cfg.latency_window + 1:] if cfg.latency_window > 1 else ()
        opened = s.opened and s.breaker(now) is BreakerState.OPEN  # a probe's success closes
        if depth is not None:
            s = replace(s, depth=min(max(0, depth), MAX_REPORTED_DEPTH), depth_at=now)
        self._put(peer, replace(
            s, rtt=rtt, service=per_item, services=services, surprise=surprise, surprise_at=surprise_at,
            latency=_ewma(s.latency, latency, cfg.latency_alpha),
            latencies=(*window, latency), successes=s.successes + 1, sampled_at=now,
            consecutive_failures=0,
            opened=opened, probing=False,
            closed_since=s.closed_since if opened or not s.opened else now,
        ))

    def start_stream(self, peer: PeerId, now: float, work: float,
                     first_token: float | None = None) -> None:
        """A generation stream of `work` tokens (`TokenCost.work`) was opened to `peer`,
        its first token expected `first_token` seconds later (`Candidate.first_token`)."""
        s = self.get(peer)
        due = math.inf if first_token is None else now + max(0.0, first_token)
        self._put(peer, replace(s, streaming=(*s.streaming, (now, max(0.0, work), due))))

    def finish_stream(self, peer: PeerId, started: float, work: float) -> None:
        """The stream `start_stream(peer, started, work)` opened ended (any outcome)."""
        s = self.get(peer)
        match = _stream(s, started, work)
        if match is not None:
            rest = list(s.streaming)
            rest.remove(match)
            self._put(peer, replace(s, streaming=tuple(rest)))

    def record_first_token(self, peer: PeerId, started: float, work: float, delay: float,
                           expected: float, now: float) -> None:
        """The first token of the stream `start_stream(peer, started, work, ...)` opened came
        `delay` seconds after it was sent, where the policy expected `expected`: a sample of
        `stream_surprise`; the stream is no longer overdue."""
        s = self.get(peer)
        match = _stream(s, started, work)
        if match is not None:
            rest = list(s.streaming)
            rest[rest.index(match)] = (match[0], match[1], math.inf)
            s = replace(s, streaming=tuple(rest))
            self._put(peer, s)
        if not (math.isfinite(delay) and math.isfinite(expected)):
            return
        cfg = self.config
        old = (s.stream_surprise_now(now, cfg.surprise_half_life)
               if s.stream_surprise_at > -math.inf else None)
        self._put(peer, replace(s, stream_surprise=_ewma(old, delay - expected, cfg.surprise_alpha),
                                stream_surprise_at=now))

    def record_stream(self, peer: PeerId, digest: Digest, tokens: int, decode_seconds: float,
                      now: float) -> None:
        """A stream from `peer` delivered `tokens` tokens, `decode_seconds` from its first to
        its last: a sample of the tokens/s one sequence gets there (at least 2 tokens;
        capped at MAX_STREAM_RATE, see there). Also a success for the breaker."""
        if tokens < 2 or not decode_seconds >= 0:
            return
        rate = min(MAX_STREAM_RATE, (tokens - 1) / decode_seconds if decode_seconds > 0
                   else MAX_STREAM_RATE)
        cfg = self.config
        s = self.get(peer)
        recent = next((v for d, v, _ in s.stream_rates if d == digest), ())
        recent = (*recent[-cfg.service_window + 1:], rate) if cfg.service_window > 1 else (rate,)
        rates = (*(e for e in s.stream_rates if e[0] != digest), (digest, recent, now))
        opened = s.opened and s.breaker(now) is BreakerState.OPEN
        self._put(peer, replace(
            s, stream_rates=rates, consecutive_failures=0, opened=opened, probing=False,
            closed_since=s.closed_since if opened or not s.opened else now))

    def record_refusal(self, peer: PeerId, depth: int, now: float) -> None:
        """`peer` refused a request past its admission bound, reporting `depth` requests
        waiting (swarm.scheduler.choose_attempt). Not a failure: the breaker and failure
        counts stay as they are; the depth replaces the advert's as an answer's does,
        clamped to [0, MAX_REPORTED_DEPTH] (the claim is unauthenticated: it only ever
        moves this peer's own estimate)."""
        s = self.get(peer)
        self._put(peer, replace(s, depth=min(max(0, depth), MAX_REPORTED_DEPTH), depth_at=now,
                                probing=False))

    def record_failure(self, peer: PeerId, kind: Failure, now: float) -> None:
        """A request to `peer` failed in a way that is the peer's fault."""
        cfg = self.config
        s = self.get(peer)
        recent = tuple(t for t in s.failure_times if now - t < cfg.failure_window)
        s = replace(s, failures=s.failures + 1, last_failure=kind, failure_times=(*recent, now),
                    consecutive_failures=s.consecutive_failures + 1, probing=False)
        state = s.breaker(now)
        if state is BreakerState.HALF_OPEN:
            s = self._open(s, s.bans, now)
        elif state is BreakerState.CLOSED and s.consecutive_failures >= cfg.failure_threshold:
            bans = 0 if now - s.closed_since >= cfg.ban_reset_after else s.bans
            s = self._open(s, bans, now)
        # OPEN: a late answer to a request sent before the breaker opened; the ban stands.
        self._put(peer, s)

    def _open(self, s: PeerStats, bans: int, now: float) -> PeerStats:
        ban = min(self.config.max_ban, self.config.base_ban * 2.0 ** bans)
        return replace(s, opened=True, open_until=now + ban, bans=bans + 1)
