"""In-memory gossip: thousands of hosts in one process, a seeded overlay, a route hook.

`MemoryNetwork` owns every host of one simulated network and one
`random.Random(seed)`; `network.join(peer_id)` returns a `MemoryGossip`, which
implements the same `Gossip` interface as the libp2p transport. Messages flood
the overlay with GossipSub's forwarding rules: a host validates each message
the first time it sees it; only an ACCEPTed message is delivered to the host's
subscribers and forwarded, once, to every link except the one it came from and
its author.

Two kinds of overlay. By default one overlay joins every host and every host
relays every topic (small swarms, where all nodes join all topics). With
`topic_meshes=True` the network behaves as GossipSub at scale: the subscribers
of a topic form that topic's own overlay (`degree` links each) and only they
relay it; a host that publishes on a topic it does not subscribe to sends to
`degree` random subscribers (its fanout, kept while they last) and relays
nothing. A publish-only host (a provider announcing itself) then costs the
swarm `degree` transmissions per message instead of a place in every mesh.
Behaviour shared with the libp2p transport (swarm/protocol/_libp2p.py): own
publishes skip our validators and reach our own subscribers; a subscriber that
falls behind loses its oldest messages; use after close raises RuntimeError.

Snapshots (`set_snapshot`/`pull`) cost one round trip of the base latency, obey
partitions and need a live peer; the route hook applies to gossip transmissions only.

Each transmission on a link asks the route hook (`set_route`) what happens to
it: dropped, delayed, duplicated. Partitions (`partition`/`heal`) cut links
between groups. Deliveries are `loop.call_later` callbacks on the running
event loop, so the same network runs in real time and under the virtual-time
loop of swarm.simnet. Everything random draws from the network's RNG: a run is
reproducible for a seed and the same sequence of calls.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from swarm._errors import ConfigError, UnavailableError
from swarm._types import PeerId
from swarm.protocol._gossip import (
    Gossip,
    GossipMessage,
    PulledItems,
    SnapshotProvider,
    Subscription,
    Validation,
    Validator,
    bounded_snapshot,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "HostStats",
    "MemoryGossip",
    "MemoryNetwork",
    "Route",
    "RouteDecision",
    "combine",
    "duplicating",
    "fixed_delay",
    "lognormal_delay",
    "lossy",
    "uniform_delay",
]

log = logging.getLogger("swarm.protocol")

# The libp2p transport's limit (GossipSub frames are 1 MiB with the envelope), so
# simulations refuse what production would.
MAX_MESSAGE_BYTES = 1024 * 1024 - 16 * 1024
# A host's address, as listen_addrs gives it: the prefix and its peer id.
MEMORY_ADDR_PREFIX = "/memory/"


# ---------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What the network does with one message sent on one link."""

    # Lose the message on this link.
    drop: bool = False
    # Seconds added to the network's base latency; unequal delays reorder messages.
    delay: float = 0.0
    # Copies that reach the receiver: 2+ duplicates the message, 0 is a drop.
    copies: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"delay must be a finite number >= 0, got {self.delay!r}")
        if self.copies < 0:
            raise ValueError(f"copies must be >= 0, got {self.copies}")


# route(src, dst, message as dst will see it, the network's RNG) -> decision.
# A route must draw randomness only from the RNG it is given (determinism).
Route = Callable[[PeerId, PeerId, GossipMessage, random.Random], RouteDecision]

_PASS = RouteDecision()
_DROP = RouteDecision(drop=True)


def _probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability is in [0, 1], got {p!r}")
    return p


def lossy(p: float) -> Route:
    """Drop each transmission independently with probability `p`."""
    _probability(p)

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        return _DROP if rng.random() < p else _PASS

    return route


def fixed_delay(seconds: float) -> Route:
    """Add the same latency to every transmission."""
    decision = RouteDecision(delay=seconds)

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        return decision

    return route


def uniform_delay(low: float, high: float) -> Route:
    """Add a latency drawn uniformly from [low, high] (jitter reorders messages)."""
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got {low}, {high}")

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        return RouteDecision(delay=rng.uniform(low, high))

    return route


def lognormal_delay(median: float, sigma: float) -> Route:
    """Add a log-normally distributed latency (long tail, as on real WANs)."""
    if median <= 0 or sigma < 0:
        raise ValueError(f"need median > 0 and sigma >= 0, got {median}, {sigma}")
    mu = math.log(median)

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        return RouteDecision(delay=rng.lognormvariate(mu, sigma))

    return route


def duplicating(p: float, copies: int = 2) -> Route:
    """With probability `p`, deliver `copies` copies of a transmission instead of one."""
    _probability(p)
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    decision = RouteDecision(copies=copies)

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        return decision if rng.random() < p else _PASS

    return route


def combine(*routes: Route) -> Route:
    """Apply routes in order: any drop drops, delays add up, copies multiply."""

    def route(src: PeerId, dst: PeerId, msg: GossipMessage, rng: random.Random) -> RouteDecision:
        delay, copies = 0.0, 1
        for r in routes:
            d = r(src, dst, msg, rng)
            if d.drop or d.copies == 0:
                return _DROP
            delay += d.delay
            copies *= d.copies
        return RouteDecision(delay=delay, copies=copies)

    return route


# ---------------------------------------------------------------------------- hosts


@dataclass(frozen=True, slots=True)
class HostStats:
    """Counters of one host since it joined."""

    # Transmissions to links (one per link per forwarded message, lost ones included).
    messages_sent: int = 0
    bytes_sent: int = 0
    # Copies that arrived, duplicates included.
    messages_received: int = 0
    bytes_received: int = 0
    # Messages this host published.
    published: int = 0
    # Distinct messages accepted and handed to local subscribers (own ones included).
    delivered: int = 0
    # Copies of messages already seen (not validated again).
    duplicates: int = 0
    # Messages the topic validator ignored / rejected (a raising validator rejects).
    ignored: int = 0
    rejected: int = 0
    # Oldest messages pushed out of a full subscription buffer.
    overflowed: int = 0
    # Items received in pulled snapshots (validated like messages: see ignored/rejected).
    snapshot_items: int = 0


class _State(enum.Enum):
    LIVE = "live"
    CLOSED = "closed"  # left with close()
    DEAD = "dead"  # crashed with MemoryNetwork.kill()


class MemoryGossip(Gossip):
    """One host of a `MemoryNetwork`; create it with `MemoryNetwork.join`."""

    def __init__(self, network: MemoryNetwork, peer_id: PeerId) -> None:
        self._network = network
        self._peer_id = peer_id
        self._state = _State.LIVE
        # Insertion-ordered dicts, never sets: iteration order must not depend on hashing.
        # Links per overlay: None is the network-wide one (`_links`), else a topic's mesh;
        # a topic's entry exists exactly while this host is in that topic's mesh.
        self._links: dict[PeerId, MemoryGossip] = {}
        self._overlay_links: dict[str | None, dict[PeerId, MemoryGossip]] = {None: self._links}
        # Topic -> subscribers this host publishes to without subscribing (topic meshes).
        self._fanout: dict[str, dict[PeerId, MemoryGossip]] = {}
        # A crashed host's peers have noticed (crash_detection passed) and dropped it.
        self._noticed = False
        self._subs: dict[str, list[Subscription]] = {}
        self._validators: dict[str, Validator] = {}
        self._snapshots: dict[str, SnapshotProvider] = {}
        self._pulled = PulledItems()
        # Seen-message ids in two generations: an id is remembered for at least
        # seen_ttl seconds, and memory stays bounded (as GossipSub's seen cache).
        self._seen: set[int] = set()
        self._seen_before: set[int] = set()
        self._seen_since: float | None = None
        self._sent = self._sent_bytes = self._received = self._received_bytes = 0
        self._published = self._delivered = self._duplicates = 0
        self._ignored = self._rejected = self._overflowed = 0
        self._snapshot_items = 0

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    async def publish(self, topic: str, data: bytes) -> None:
        """Flood `data` on `topic`; our own subscribers get it too (our validator is skipped).

        Raises ValueError for data over MAX_MESSAGE_BYTES, RuntimeError when closed.
        """
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        self._check_live()
        self._network._publish(self, topic, data)

    def subscribe(self, topic: str) -> Subscription:
        """Messages on `topic` from now on, until close(); `aclose()` the result to stop early.

        On a closed host the iteration ends at once.
        """
        sub = Subscription(topic, self._network._buffer, self._unsubscribe)
        if self._state is _State.LIVE:
            subs = self._subs.setdefault(topic, [])
            subs.append(sub)
            if len(subs) == 1:
                self._network._subscribed(self, topic)
        else:
            sub.end(discard=True)
        return sub

    def set_validator(self, topic: str, validator: Validator) -> None:
        self._validators[topic] = validator

    def set_snapshot(self, topic: str, provider: SnapshotProvider) -> None:
        self._snapshots[topic] = provider

    async def pull(self, topic: str, peer: PeerId) -> list[GossipMessage]:
        """`peer`'s snapshot of `topic`, validated here as gossip would be; one round trip.

        Raises UnavailableError when `peer` is not live, is across a partition, or
        serves no snapshot of `topic`; RuntimeError when this host is closed.
        """
        self._check_live()
        network = self._network
        network._bind_loop()
        await asyncio.sleep(2 * network._latency)  # the request and its answer
        self._check_live()
        server = network._hosts.get(peer)
        if server is None or not network.reachable(self._peer_id, peer):
            raise UnavailableError(f"peer {peer.short} cannot be reached")
        provider = server._snapshots.get(topic)
        if provider is None:
            raise UnavailableError(f"peer {peer.short} serves no snapshot of {topic}")
        items = bounded_snapshot(provider())
        size = sum(len(data) for data in items)
        server._sent_bytes += size
        self._received_bytes += size
        self._snapshot_items += len(items)
        accepted = []
        for data in items:
            msg = GossipMessage(topic, data, received_from=peer, source=None)
            if self._validate(msg) is Validation.ACCEPT:
                accepted.append(msg)
                self._pulled.add(topic, data)
        return accepted

    def connected_peers(self) -> list[PeerId]:
        """Peers linked in any overlay, and fanout peers (topic meshes), without repeats."""
        if len(self._overlay_links) == 1 and not self._fanout:
            return list(self._links)
        peers: dict[PeerId, None] = {}
        for links in (*self._overlay_links.values(), *self._fanout.values()):
            peers.update(dict.fromkeys(links))
        return list(peers)

    @property
    def listen_addrs(self) -> list[str]:
        return [f"{MEMORY_ADDR_PREFIX}{self._peer_id}"]

    async def connect(self, addr: str) -> None:
        """The network keeps the overlay itself: this only checks the peer is reachable."""
        self._check_live()
        if not addr.startswith(MEMORY_ADDR_PREFIX):
            raise ConfigError(f"not an in-memory address: {addr!r}")
        try:
            peer = PeerId(addr[len(MEMORY_ADDR_PREFIX):])
        except ValueError as exc:
            raise ConfigError(f"not an in-memory address: {addr!r}") from exc
        if peer not in self._network._hosts:
            raise ConnectionRefusedError(f"no live host {peer.short} on this network")

    async def close(self) -> None:
        """Leave: links go away on both ends now; subscriptions end after their buffer."""
        if self._state is _State.LIVE:
            self._network._leave(self)

    def stats(self) -> HostStats:
        """A snapshot of this host's counters."""
        return HostStats(
            messages_sent=self._sent, bytes_sent=self._sent_bytes,
            messages_received=self._received, bytes_received=self._received_bytes,
            published=self._published, delivered=self._delivered,
            duplicates=self._duplicates, ignored=self._ignored, rejected=self._rejected,
            overflowed=self._overflowed, snapshot_items=self._snapshot_items,
        )

    def __repr__(self) -> str:
        return (f"<MemoryGossip {self._peer_id.short} {self._state.value} "
                f"links={len(self.connected_peers())}>")

    # ------------------------------------------------------------------ internals

    def _check_live(self) -> None:
        if self._state is not _State.LIVE:
            raise RuntimeError(f"gossip host {self._peer_id.short} is {self._state.value}")

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]
                if self._state is _State.LIVE:
                    self._network._unsubscribed(self, sub.topic)

    def _end_subscriptions(self, *, discard: bool) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.end(discard=discard)
        self._subs.clear()

    def _first_sight(self, msg_id: int, now: float, ttl: float) -> bool:
        if self._seen_since is None:
            self._seen_since = now
        elif now - self._seen_since >= ttl:
            self._seen_before = self._seen if now - self._seen_since < 2 * ttl else set()
            self._seen = set()
            self._seen_since = now
        if msg_id in self._seen or msg_id in self._seen_before:
            return False
        self._seen.add(msg_id)
        return True

    def _validate(self, msg: GossipMessage, *, gossip: bool = False) -> Validation:
        validator = self._validators.get(msg.topic)
        if validator is None:
            return Validation.ACCEPT
        try:
            verdict = validator(msg)
        except Exception:
            log.exception("gossip validator raised; message rejected",
                          extra={"topic": msg.topic, "peer": self._peer_id.short})
            verdict = Validation.REJECT
        if gossip:
            verdict = self._pulled.owed(msg.topic, msg.data, verdict)
        if verdict is Validation.IGNORE:
            self._ignored += 1
        elif verdict is not Validation.ACCEPT:
            self._rejected += 1
            verdict = Validation.REJECT
        return verdict


class _Overlay:
    """A random graph of `degree` links per host: every host's (key None), or a topic's mesh.

    Members are kept in a list for O(1) random picks (swap-removed on leave); the
    links live on the hosts (`MemoryGossip._overlay_links[key]`).
    """

    __slots__ = ("_pos", "key", "members")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.members: list[MemoryGossip] = []
        self._pos: dict[MemoryGossip, int] = {}

    def __contains__(self, host: object) -> bool:
        return host in self._pos

    def __len__(self) -> int:
        return len(self.members)

    def add(self, host: MemoryGossip) -> None:
        self._pos[host] = len(self.members)
        self.members.append(host)

    def discard(self, host: MemoryGossip) -> None:
        index = self._pos.pop(host, None)
        if index is None:
            return
        last = self.members.pop()
        if last is not host:
            self.members[index] = last
            self._pos[last] = index

    def links(self, host: MemoryGossip) -> dict[PeerId, MemoryGossip]:
        """`host`'s links in this overlay (empty once it has left)."""
        return host._overlay_links.get(self.key, {})


# ---------------------------------------------------------------------------- network


class MemoryNetwork:
    """All hosts of one simulated gossip network.

    seed             seeds the network's RNG (topology, routes): same seed and
                     same calls give the same run.
    degree           links per host (GossipSub's mesh degree D): the overlay is
                     a random graph in which every host has `degree` links
                     (see `join`); 0 for explicit topologies built with
                     `link`/`unlink`.
    default_latency  seconds every transmission takes before the route's delay.
    crash_detection  seconds before the neighbours of a killed host drop their
                     links to it (a killed libp2p peer was noticed in ~0.16 s).
    overhead_bytes   per-message framing added to len(topic) + len(data) in the
                     byte counters (~120 for a signed GossipSub message).
    seen_ttl         seconds a host remembers a message id for de-duplication.
    subscription_buffer  messages a subscription holds; when full the oldest is
                     dropped (as Libp2pConfig.max_queued_messages).
    topic_meshes     False: one overlay, every host relays every topic. True:
                     each topic's subscribers form its mesh and only they relay
                     it; others publish to `degree` subscribers (fanout). Needs
                     degree >= 1; `link`/`unlink` are refused.
    """

    def __init__(self, seed: int, *, degree: int = 6, default_latency: float = 0.0005,
                 crash_detection: float = 0.2, overhead_bytes: int = 0, seen_ttl: float = 120.0,
                 subscription_buffer: int = 1024, topic_meshes: bool = False) -> None:
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        if default_latency < 0 or crash_detection < 0 or overhead_bytes < 0 or seen_ttl <= 0:
            raise ValueError("latencies, overhead and crash detection are >= 0; seen_ttl > 0")
        if subscription_buffer < 1:
            raise ValueError(f"subscription_buffer must be >= 1, got {subscription_buffer}")
        if topic_meshes and degree < 1:
            raise ValueError("topic meshes need degree >= 1")
        self._rng = random.Random(seed)
        self._degree = degree
        self._latency = default_latency
        self._crash_detection = crash_detection
        self._overhead = overhead_bytes
        self._seen_ttl = seen_ttl
        self._buffer = subscription_buffer
        self._topic_meshes = topic_meshes
        self._hosts: dict[PeerId, MemoryGossip] = {}
        # Every live host; it is also the overlay unless topic_meshes.
        self._everyone = _Overlay(None)
        self._meshes: dict[str, _Overlay] = {}
        self._route: Route | None = None
        self._groups: dict[PeerId, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._in_flight = 0
        self._settlers: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------------ membership

    def join(self, peer_id: PeerId) -> MemoryGossip:
        """Add a host. With degree > 0 it gets `degree` links to random live hosts.

        While the network is small the joiner links to everyone. After that it
        takes degree/2 random links (x, y) and splits each into (x, new) and
        (new, y): every host keeps `degree` links, the graph stays connected,
        and it is a random regular graph (diameter ~ log n) whatever the join
        order. Leaving hosts' neighbours are re-paired the same way. With topic
        meshes the same happens in a topic's mesh when a host subscribes to it.
        """
        if peer_id in self._hosts:
            raise ValueError(f"{peer_id} is already in the network")
        host = MemoryGossip(self, peer_id)
        if self._degree and not self._topic_meshes:
            self._attach(self._everyone, host)
        self._hosts[peer_id] = host
        self._everyone.add(host)
        return host

    def peers(self) -> list[PeerId]:
        """Live hosts, in join order."""
        return list(self._hosts)

    def subscribers(self, topic: str) -> list[PeerId]:
        """Live hosts in `topic`'s mesh (topic meshes), in no particular but fixed order."""
        mesh = self._meshes.get(topic)
        return [] if mesh is None else [h._peer_id for h in mesh.members]

    def link(self, a: PeerId, b: PeerId) -> None:
        """Connect two live hosts (explicit topologies)."""
        self._explicit()
        ha, hb = self._live(a), self._live(b)
        if ha is hb:
            raise ValueError("a host does not link to itself")
        self._connect(self._everyone, ha, hb)

    def unlink(self, a: PeerId, b: PeerId) -> None:
        """Disconnect two hosts (no re-linking follows)."""
        self._explicit()
        ha, hb = self._live(a), self._live(b)
        self._disconnect(self._everyone, ha, hb)

    def kill(self, peer_id: PeerId) -> None:
        """Crash a host: it stops at once, says no goodbye; its subscriptions end unread.

        Its neighbours keep their links to it (and lose what they send there)
        for `crash_detection` seconds, then drop them and re-link; so do
        publishers that had it in their fanout.
        """
        host = self._live(peer_id)
        host._state = _State.DEAD
        self._remove(host)
        host._end_subscriptions(discard=True)
        lost = []
        for overlay in (self._everyone, *self._overlays_of(host)):
            links = overlay.links(host)
            lost.append((overlay, list(links.values())))
            links.clear()
            overlay.discard(host)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._crash_detection == 0:
            self._forget(host, lost)
        else:
            loop.call_later(self._crash_detection, self._forget, host, lost)

    # ------------------------------------------------------------------ conditions

    def set_route(self, route: Route | None) -> None:
        """Decide the fate of every transmission with `route` (None: deliver all)."""
        self._route = route

    def partition(self, groups: Iterable[Iterable[PeerId]]) -> None:
        """Cut the network: messages do not cross between groups.

        Hosts in no group form one more group together. Links stay up (they are
        not re-formed inside the groups): what is sent across the cut is lost,
        so a host whose links all cross it hears nothing until `heal`. Messages
        already in flight still arrive.
        """
        mapping: dict[PeerId, int] = {}
        for index, group in enumerate(groups):
            for peer in group:
                if peer in mapping:
                    raise ValueError(f"{peer} is in two groups")
                mapping[peer] = index
        self._groups = mapping

    def heal(self) -> None:
        """End the partition."""
        self._groups = None

    def reachable(self, a: PeerId, b: PeerId) -> bool:
        """Are `a` and `b` on the same side of the partition (if any)?"""
        groups = self._groups
        return groups is None or groups.get(a) == groups.get(b)

    @property
    def in_flight(self) -> int:
        """Scheduled deliveries that have not happened yet."""
        return self._in_flight

    async def settle(self) -> None:
        """Wait until no message is in flight (every scheduled delivery has happened)."""
        while self._in_flight:
            waiter = asyncio.get_running_loop().create_future()
            self._settlers.append(waiter)
            await waiter

    # ------------------------------------------------------------------ topology internals

    def _explicit(self) -> None:
        if self._topic_meshes:
            raise ValueError("explicit links are for networks without topic meshes")

    def _live(self, peer_id: PeerId) -> MemoryGossip:
        host = self._hosts.get(peer_id)
        if host is None:
            raise ValueError(f"{peer_id} is not a live host of this network")
        return host

    def _overlays_of(self, host: MemoryGossip) -> list[_Overlay]:
        return [self._meshes[key] for key in host._overlay_links if key is not None]

    def _connect(self, overlay: _Overlay, a: MemoryGossip, b: MemoryGossip) -> None:
        overlay.links(a)[b._peer_id] = b
        overlay.links(b)[a._peer_id] = a

    def _disconnect(self, overlay: _Overlay, a: MemoryGossip, b: MemoryGossip) -> None:
        la, lb = overlay.links(a), overlay.links(b)
        if la.get(b._peer_id) is b:
            del la[b._peer_id]
        if lb.get(a._peer_id) is a:
            del lb[a._peer_id]

    def _remove(self, host: MemoryGossip) -> None:
        if self._hosts.get(host._peer_id) is host:
            del self._hosts[host._peer_id]
        self._everyone.discard(host)

    def _random_member(self, overlay: _Overlay) -> MemoryGossip:
        return overlay.members[self._rng.randrange(len(overlay.members))]

    def _attach(self, overlay: _Overlay, host: MemoryGossip) -> None:
        # `host` is not a member yet: it links to members.
        rng, degree = self._rng, self._degree
        mine = overlay.links(host)
        if len(overlay) <= degree:
            for other in overlay.members:
                self._connect(overlay, host, other)
            return
        attempts = 8 * degree
        while len(mine) + 2 <= degree and attempts:
            attempts -= 1
            x = self._random_member(overlay)
            if x._peer_id in mine:
                continue
            neighbours = list(overlay.links(x).values())
            if not neighbours:
                self._connect(overlay, host, x)
                continue
            y = neighbours[rng.randrange(len(neighbours))]
            if y is host or y._state is not _State.LIVE or y._peer_id in mine:
                continue
            self._disconnect(overlay, x, y)
            self._connect(overlay, host, x)
            self._connect(overlay, host, y)
        self._top_up(overlay, host, attempts)

    def _top_up(self, overlay: _Overlay, host: MemoryGossip, attempts: int) -> None:
        # Odd degrees and unlucky draws end here: plain links to random members.
        mine = overlay.links(host)
        while len(mine) < self._degree and attempts and len(overlay) > 1:
            attempts -= 1
            other = self._random_member(overlay)
            if other is not host and other._peer_id not in mine:
                self._connect(overlay, host, other)

    def _mend(self, overlay: _Overlay, neighbours: list[MemoryGossip]) -> None:
        # The inverse of a join's edge splits: pair up the hosts that lost a
        # link (in random order) so each gets one back and the graph stays whole.
        if not self._degree:
            return
        live = [n for n in neighbours if n._state is _State.LIVE and n in overlay]
        self._rng.shuffle(live)
        lonely = []
        while len(live) >= 2:
            a, b = live.pop(), live.pop()
            if b._peer_id in overlay.links(a):
                lonely += [a, b]
            else:
                self._connect(overlay, a, b)
        for n in lonely + live:
            self._top_up(overlay, n, 4 * self._degree)

    def _depart(self, overlay: _Overlay, host: MemoryGossip) -> None:
        """`host` leaves `overlay` gracefully: its links go now and its neighbours re-pair."""
        overlay.discard(host)
        neighbours = list(overlay.links(host).values())
        for other in neighbours:
            self._disconnect(overlay, host, other)
        if overlay.key is not None:
            del host._overlay_links[overlay.key]
        self._mend(overlay, neighbours)

    def _leave(self, host: MemoryGossip) -> None:
        host._state = _State.CLOSED
        self._remove(host)
        for overlay in (self._everyone, *self._overlays_of(host)):
            self._depart(overlay, host)
        host._fanout.clear()
        host._end_subscriptions(discard=False)

    def _forget(self, dead: MemoryGossip,
                lost: list[tuple[_Overlay, list[MemoryGossip]]]) -> None:
        dead._noticed = True
        for overlay, neighbours in lost:
            still = [n for n in neighbours if overlay.links(n).get(dead._peer_id) is dead]
            for other in still:
                del overlay.links(other)[dead._peer_id]
            self._mend(overlay, still)

    def _subscribed(self, host: MemoryGossip, topic: str) -> None:
        if not self._topic_meshes:
            return
        mesh = self._meshes.get(topic)
        if mesh is None:
            mesh = self._meshes[topic] = _Overlay(topic)
        host._fanout.pop(topic, None)  # a subscriber publishes to its mesh
        host._overlay_links[topic] = {}
        self._attach(mesh, host)
        mesh.add(host)

    def _unsubscribed(self, host: MemoryGossip, topic: str) -> None:
        mesh = self._meshes.get(topic)
        if mesh is not None and host in mesh:
            self._depart(mesh, host)

    def _fanout_of(self, host: MemoryGossip, topic: str) -> dict[PeerId, MemoryGossip]:
        """The subscribers `host` publishes `topic` to without subscribing, topped up to degree."""
        fanout = host._fanout.get(topic)
        if fanout is None:
            fanout = host._fanout[topic] = {}
        mesh = self._meshes.get(topic)
        # A peer stays until it is known to be gone: unsubscribed, left, or noticed dead.
        for peer_id, peer in list(fanout.items()):
            if not ((mesh is not None and peer in mesh)
                    or (peer._state is _State.DEAD and not peer._noticed)):
                del fanout[peer_id]
        if mesh is None:
            return fanout
        attempts = 4 * self._degree
        while len(fanout) < self._degree and attempts and len(mesh):
            attempts -= 1
            other = self._random_member(mesh)
            if other is not host and other._peer_id not in fanout:
                fanout[other._peer_id] = other
        return fanout

    # ------------------------------------------------------------------ message path

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("a MemoryNetwork runs on one event loop")
            self._loop = loop
            self._in_flight = 0  # deliveries scheduled on a closed loop never happen
        return loop

    def _publish(self, host: MemoryGossip, topic: str, data: bytes) -> None:
        self._bind_loop()
        self._next_id += 1
        host._published += 1
        msg = GossipMessage(topic, data, received_from=host._peer_id, source=host._peer_id)
        size = len(data) + len(topic.encode()) + self._overhead
        self._receive(host, self._next_id, msg, size, own=True)

    def _arrive(self, host: MemoryGossip, msg_id: int, msg: GossipMessage, size: int) -> None:
        self._in_flight -= 1
        if host._state is _State.LIVE:
            host._received += 1
            host._received_bytes += size
            # With topic meshes a host that is no longer in the topic's mesh ignores it.
            if not self._topic_meshes or msg.topic in host._overlay_links:
                self._receive(host, msg_id, msg, size)
        if not self._in_flight and self._settlers:
            settlers, self._settlers = self._settlers, []
            for waiter in settlers:
                if not waiter.done():
                    waiter.set_result(None)

    def _receive(self, host: MemoryGossip, msg_id: int, msg: GossipMessage, size: int,
                 own: bool = False) -> None:
        loop = self._loop
        assert loop is not None  # bound by _publish before any message exists
        if not host._first_sight(msg_id, loop.time(), self._seen_ttl):
            host._duplicates += 1
            return
        # Validators judge what peers send us, not our own publishes (as in _libp2p).
        if not own and host._validate(msg, gossip=True) is not Validation.ACCEPT:
            return
        host._delivered += 1
        for sub in host._subs.get(msg.topic, ()):
            if not sub.push(msg):
                host._overflowed += 1
        if not self._topic_meshes:
            links = host._links
        else:
            mesh_links = host._overlay_links.get(msg.topic)
            if mesh_links is not None:
                links = mesh_links
            elif own:
                links = self._fanout_of(host, msg.topic)
            else:
                return
        if not links:
            return
        me = host._peer_id
        out = GossipMessage(msg.topic, msg.data, received_from=me, source=msg.source)
        came_from, author = msg.received_from, msg.source
        route, groups, rng = self._route, self._groups, self._rng
        my_group = groups.get(me) if groups is not None else None
        base = self._latency
        for peer, dst in links.items():
            if peer in (came_from, author):
                continue
            host._sent += 1
            host._sent_bytes += size
            if groups is not None and groups.get(peer) != my_group:
                continue
            delay, copies = base, 1
            if route is not None:
                decision = route(me, peer, out, rng)
                if decision.drop or not decision.copies:
                    continue
                delay += decision.delay
                copies = decision.copies
            self._in_flight += copies
            for _ in range(copies):
                loop.call_later(delay, self._arrive, dst, msg_id, out, size)
