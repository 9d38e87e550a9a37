"""Membership: publish this node's capacity adverts and keep the peer view from everyone's.

Adverts go out periodically (with jitter) and soon after a significant change
(models, endpoints, price, draining, or a large move in queue depth), never more
often than `min_interval`. Every received advert is validated before the
transport forwards it: a bad signature is REJECTed; stale, replayed, echoed or
rate-limited adverts are IGNOREd. Accepted adverts enter the PeerView through
the pure `admit`; a periodic sweep `expire`s peers that fell silent.

Joining: membership serves a snapshot of the signed adverts it holds (its own
first, then the freshest) and pulls one from every peer it connects to
(SnapshotPuller), through the same validator as gossip; `synced` is set once the
peers it was connected to have answered, so a joining peer sees the swarm at once,
not one advert round later.

Floods of fresh identities: besides the per-author rate, bringing an author the
view does not hold ("introducing" it) costs a token of the peer that handed it
over (`received_from`: a connection, or the peer a snapshot came from) and, for
an advert published by someone other than its author (`source`: honest nodes
publish only their own, and forwarding keeps the publisher), a token of that
publisher's much smaller relay budget. The view itself holds at most
`ViewPolicy.max_untrusted` untrusted authors. `trust(peer) > 0` (staking's hook)
exempts an author from both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import IntegrityError
from swarm._types import PeerId
from swarm.protocol import _advert
from swarm.protocol._advert import Advert
from swarm.protocol._gossip import MAX_SNAPSHOT_ITEMS, Gossip, GossipMessage, Validation
from swarm.protocol._identity import Identity
from swarm.protocol._snapshot import SnapshotPuller
from swarm.protocol._view import Admission, PeerView, ViewPolicy, admit, check, expire

__all__ = ["ADVERT_TOPIC", "Membership", "MembershipConfig", "RateLimiter", "significant_change"]

log = logging.getLogger("swarm.protocol")

ADVERT_TOPIC = "swarm/adverts/v1"


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    # Seconds between periodic adverts (each randomly stretched by +/- `jitter`).
    advert_interval: float = 5.0
    # Fraction of the interval used as jitter, so nodes do not advertise in lockstep.
    jitter: float = 0.2
    # An advert lives advert_interval * ttl_intervals at receivers: a silent peer
    # leaves every view within that many intervals (plus one sweep).
    ttl_intervals: float = 2.5
    # Least time between two of our adverts (change-driven ones included).
    min_interval: float = 0.5
    # How often we look for a significant change and sweep expired peers.
    check_interval: float = 0.25
    # Per-author flood control at receivers: sustained adverts/s and burst.
    rate_per_second: float = 2.0
    rate_burst: float = 6.0
    # Authors new to the view that one peer may hand us (gossip it forwards, snapshots
    # it serves): burst and refill/s. A joining peer learns the swarm from one snapshot,
    # so the burst covers a swarm of that many providers; the view's max_untrusted
    # bounds what many peers together can bring.
    introduce_burst: float = 512.0
    introduce_rate: float = 4.0
    # Authors new to the view that one publisher may bring in adverts it did not author
    # (honest nodes never do: they forward, which keeps the publisher): burst, refill/s.
    relay_burst: float = 8.0
    relay_rate: float = 0.1
    view_policy: ViewPolicy = field(default_factory=ViewPolicy)
    # Keep a peer view (subscribe to adverts). A provider that routes nothing may only
    # publish: in a large swarm that spares it every other provider's adverts.
    listen: bool = True
    # Keep connections to at least this many peers, dialing random ones from the view
    # (their adverts carry addresses): a swarm that knows only its bootstrap peer is a
    # star, and GossipSub's mesh around one hub drops members (bench/RESULTS.md).
    min_peers: int = 4
    # Seconds between looks at the connection count (each stretched by +/- 50%).
    connect_interval: float = 2.0
    # Adverts in the snapshot we serve to joining peers (ours first, then the freshest).
    snapshot_adverts: int = MAX_SNAPSHOT_ITEMS

    @property
    def ttl(self) -> float:
        return self.advert_interval * self.ttl_intervals

    @classmethod
    def fast(cls) -> MembershipConfig:
        """Short intervals for tests and local demos."""
        return cls(advert_interval=1.0, min_interval=0.2, check_interval=0.1)


def significant_change(old: Advert | None, new: Advert) -> bool:
    """Should `new` be published now rather than at the next periodic advert?"""
    if old is None:
        return True
    if (old.endpoints, old.price, old.region, old.draining, old.hardware, old.stored) != (
            new.endpoints, new.price, new.region, new.draining, new.hardware, new.stored):
        return True
    if [(m.digest, m.name, m.tags, m.max_batch_size) for m in old.models] != [
            (m.digest, m.name, m.tags, m.max_batch_size) for m in new.models]:
        return True
    delta = abs(new.queue_depth - old.queue_depth)
    return delta >= max(4, old.queue_depth // 2)


class RateLimiter:
    """Token bucket per key; thread-safe (libp2p validators run on the transport's thread)."""

    def __init__(self, rate: float, burst: float, clock: Clock = SYSTEM_CLOCK,
                 max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def allow(self, key: object) -> bool:
        now = self._clock.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > self._max_keys:  # forget the longest-idle keys
                for old in sorted(self._buckets, key=lambda k: self._buckets[k][1])[
                        : self._max_keys // 10]:
                    del self._buckets[old]
            return allowed


class _Introductions:
    """Who may bring authors new to the view: token buckets per forwarder and per relay.

    Thread-safe (validators run on the transport's thread). An author charged once is
    remembered (bounded), so its further adverts, until the first is admitted, are free.
    """

    _REMEMBERED = 8192

    def __init__(self, config: MembershipConfig, clock: Clock) -> None:
        self._forwarders = RateLimiter(config.introduce_rate, config.introduce_burst, clock)
        self._relays = RateLimiter(config.relay_rate, config.relay_burst, clock)
        self._charged: collections.OrderedDict[PeerId, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def allow(self, msg: GossipMessage, author: PeerId) -> str | None:
        """None when `msg` may introduce `author`, else the counter that refused it."""
        with self._lock:
            if author in self._charged:
                self._charged.move_to_end(author)
                return None
        relay = msg.source is not None and msg.source != author
        if relay and not self._relays.allow(msg.source):
            return "relay_limited"
        if msg.received_from != author and not self._forwarders.allow(msg.received_from):
            return "introduce_limited"
        with self._lock:
            self._charged[author] = None
            while len(self._charged) > self._REMEMBERED:
                self._charged.popitem(last=False)
        return None


def _equal_trust(peer: PeerId) -> float:
    return 0.0


@functools.lru_cache(maxsize=8192)
def _decode_cached(data: bytes) -> Advert:
    # Same bytes, same verdict: verify each distinct advert once per process
    # (a simulated swarm runs many hosts in one process). Failures are not cached.
    return _advert.decode(data)


class Membership:
    """Keeps `view` current from gossip; publishes our adverts when `source` is given.

    A light peer (a client) passes no identity/source: it only listens.

    `clock` is read for every admission, expiry and advert timestamp. Its periodic
    waits are the event loop's timers, so the clock must run with the loop: the
    system clock on a real loop, simnet's VirtualClock on its virtual-time loop.

    `trust(peer)` ranks authors for view space (thread-safe, fast): > 0 exempts an
    author from the untrusted bound and the introduction budgets. Everyone is equal
    (0) by default; staking will pass bonded stake.
    """

    def __init__(self, gossip: Gossip, *, identity: Identity | None = None,
                 source: Callable[[], Advert] | None = None, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None,
                 config: MembershipConfig = MembershipConfig(),
                 trust: Callable[[PeerId], float] = _equal_trust) -> None:
        if (identity is None) != (source is None):
            raise ValueError("a publishing member needs both an identity and an advert source")
        self.gossip = gossip
        self.config = config
        self._identity = identity
        self._source = source
        self._clock = clock
        self._rng = rng or random.Random()
        self._view = PeerView(own=identity.peer_id if identity else None)
        self._limiter = RateLimiter(config.rate_per_second, config.rate_burst, clock)
        self._introductions = _Introductions(config, clock)
        self._trust = trust
        self._changed = asyncio.Event()
        self._view_changed = asyncio.Event()
        self._last_published: Advert | None = None
        self._last_signed = b""
        self._last_sequence = 0
        self.counters: dict[str, int] = {a.value: 0 for a in Admission} | {
            "forged": 0, "rate_limited": 0, "introduce_limited": 0, "relay_limited": 0,
            "published": 0}
        self._puller = SnapshotPuller(gossip, ADVERT_TOPIC, self._receive_pulled,
                                      interval=config.check_interval)
        gossip.set_validator(ADVERT_TOPIC, self.validate)
        gossip.set_snapshot(ADVERT_TOPIC, self.snapshot)

    @property
    def view(self) -> PeerView:
        return self._view

    @property
    def synced(self) -> asyncio.Event:
        """Set once the first round of snapshot pulls is in (one succeeded): the view then
        holds what the peers we were connected to knew."""
        return self._puller.synced

    @property
    def snapshot_counters(self) -> dict[str, int]:
        """pulls, pull_failures, pulled_items (accepted adverts from snapshots)."""
        return self._puller.counters

    def notify_change(self) -> None:
        """Ask for an advert soon (still subject to min_interval)."""
        self._changed.set()

    def snapshot(self) -> Sequence[bytes]:
        """Signed adverts for a joining peer: ours, then the view's freshest first (bounded).

        Runs on the transport's thread: it reads only immutable state.
        """
        own = [self._last_signed] if self._last_signed else []
        entries = sorted((e for e in self._view if e.signed), key=lambda e: -e.received_at)
        room = max(0, self.config.snapshot_adverts - len(own))
        return own + [e.signed for e in entries[:room]]

    # ------------------------------------------------------------------ validation

    def validate(self, msg: GossipMessage) -> Validation:
        """Transport-side check before delivery and forwarding (may run on another thread)."""
        try:
            advert = _decode_cached(msg.data)
        except IntegrityError:
            self.counters["forged"] += 1
            return Validation.REJECT
        trust = self._trust(advert.peer_id)
        view = self._view
        verdict = check(view, advert, self._clock.time(), self.config.view_policy, trust)
        if not verdict.ok:
            self.counters[verdict.value] += 1
            return Validation.IGNORE
        if not self._limiter.allow(advert.peer_id):
            self.counters["rate_limited"] += 1
            return Validation.IGNORE
        if trust <= 0 and advert.peer_id not in view.entries:
            refused = self._introductions.allow(msg, advert.peer_id)
            if refused is not None:
                self.counters[refused] += 1
                return Validation.IGNORE
        return Validation.ACCEPT

    def receive(self, data: bytes, *, pulled: bool = False) -> Admission:
        """Admit one advert (already validated by the transport) into the view.

        `pulled`: it came in a snapshot, so it may be old already: it counts as received
        when it was signed (by our clock, and at most half its TTL ago, so a skewed clock
        cannot expire it on arrival), so a dead author's advert does not get a new TTL.
        """
        try:
            advert = _decode_cached(data)
        except IntegrityError:
            self.counters["forged"] += 1
            return Admission.STALE
        wall = self._clock.time()
        age = min(max(0.0, wall - advert.timestamp), advert.ttl / 2) if pulled else 0.0
        self._view, verdict = admit(self._view, advert, self._clock.monotonic(), wall,
                                    self.config.view_policy, trust=self._trust(advert.peer_id),
                                    signed=data, age=age)
        if verdict.ok:
            self.counters[verdict.value] += 1
            self._view_changed.set()
        elif verdict is Admission.FULL:
            self.counters[verdict.value] += 1
        return verdict

    def _receive_pulled(self, msg: GossipMessage) -> None:
        self.receive(msg.data, pulled=True)

    # ------------------------------------------------------------------ publishing

    def _next_advert(self) -> Advert:
        assert self._source is not None
        base = self._source()
        now_ms = int(self._clock.time() * 1000)
        self._last_sequence = max(self._last_sequence + 1, now_ms)
        return dataclasses.replace(base, sequence=self._last_sequence,
                                   timestamp=now_ms / 1000, ttl=self.config.ttl)

    async def publish_now(self) -> Advert:
        assert self._identity is not None
        advert = self._next_advert()
        signed = _advert.encode(advert, self._identity)
        await self.gossip.publish(ADVERT_TOPIC, signed)
        self._last_published = advert
        self._last_signed = signed
        self.counters["published"] += 1
        return advert

    def _period(self) -> float:
        j = self.config.jitter
        return self.config.advert_interval * self._rng.uniform(1 - j, 1 + j)

    async def _publish_logged(self) -> None:
        # A transport failure must not take the node down: log it, retry next period.
        try:
            await self.publish_now()
        except Exception as exc:
            self.counters["publish_failed"] = self.counters.get("publish_failed", 0) + 1
            log.warning("advert publish failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _publisher(self) -> None:
        assert self._source is not None
        last = self._clock.monotonic()
        await self._publish_logged()
        period = self._period()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.check_interval):
                    await self._changed.wait()
            now = self._clock.monotonic()
            if now - last < self.config.min_interval:
                # Too soon: sleep it off. (With a change pending, the event stays set and
                # waiting on it again would spin without yielding.)
                await asyncio.sleep(self.config.min_interval - (now - last))
                continue
            due = now - last >= period
            if due or self._changed.is_set() or significant_change(
                    self._last_published, self._source()):
                self._changed.clear()
                await self._publish_logged()
                last = now
                period = self._period()

    # ------------------------------------------------------------------ receiving

    async def _receiver(self) -> None:
        async for msg in self.gossip.subscribe(ADVERT_TOPIC):
            self.receive(msg.data)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            swept = expire(self._view, self._clock.monotonic(), self.config.view_policy)
            if swept is not self._view and len(swept) != len(self._view):
                for peer in sorted(set(self._view.entries) - set(swept.entries),
                                   key=lambda p: p.value):
                    advert = self._view.entries[peer].advert
                    # Said once per peer, here: the transports keep lost connections quiet.
                    # The peer is in the text itself: a program that configured no logging
                    # sees the message alone.
                    if advert.draining:
                        log.info("peer %s left", peer.short)
                    else:
                        log.warning("peer %s unreachable: no advert for %g s; no longer "
                                    "routed to", peer.short, advert.ttl,
                                    extra={"endpoint": ",".join(advert.endpoints)})
                self._view_changed.set()
            self._view = swept

    async def _connector(self) -> None:
        while True:
            await asyncio.sleep(self.config.connect_interval * self._rng.uniform(0.5, 1.5))
            connected = set(self.gossip.connected_peers())
            want = self.config.min_peers - len(connected)
            if want <= 0:
                continue
            candidates = [e for e in self._view
                          if e.peer_id not in connected and e.advert.p2p_addrs]
            for entry in self._rng.sample(candidates, min(want, len(candidates))):
                try:
                    async with asyncio.timeout(10):
                        await self.gossip.connect(entry.advert.p2p_addrs[0])
                except Exception as exc:  # an unreachable peer is routine; try others later
                    self.counters["dial_failed"] = self.counters.get("dial_failed", 0) + 1
                    log.debug("peer dial failed", extra={"peer": entry.peer_id.short,
                                                         "error": f"{type(exc).__name__}"})

    async def wait_until(self, predicate: Callable[[PeerView], bool], timeout: float) -> bool:
        """Wait until the view satisfies `predicate` (True) or `timeout` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self._view):
                    self._view_changed.clear()
                    await self._view_changed.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Publish (if publishing), receive and sweep until cancelled."""
        if not self.config.listen and self._source is None:
            raise ValueError("a member that neither listens nor publishes has nothing to do")
        async with asyncio.TaskGroup() as tg:
            if self.config.listen:
                tg.create_task(self._receiver(), name="membership-receiver")
                tg.create_task(self._puller.run(), name="membership-snapshots")
                tg.create_task(self._sweeper(), name="membership-sweeper")
                if self.config.min_peers > 0:
                    tg.create_task(self._connector(), name="membership-connector")
            if self._source is not None:
                tg.create_task(self._publisher(), name="membership-publisher")
