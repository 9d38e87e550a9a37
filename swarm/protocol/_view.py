"""The peer view: a frozen, queryable snapshot of the swarm, built from adverts.

Pure functions over immutable state (`immutables.Map`, O(log n) updates with
structural sharing): `admit(view, advert, ...)` returns the next view and why
the advert was or was not taken; `expire(view, now)` drops silent peers. The
scheduler reads a PeerView; the membership service swaps in new ones.

Replay protection: an advert must be fresh (its timestamp within
`max_clock_skew` of our wall clock) and carry a sequence number above the last
one accepted from its author. Sequence memory outlives expiry for as long as a
replayed advert could still look fresh.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import immutables

from swarm._types import Digest, PeerId
from swarm.protocol._advert import Advert

__all__ = ["Admission", "PeerEntry", "PeerView", "ViewPolicy", "admit", "check", "expire"]


class Admission(enum.Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # sequence not above the last accepted one
    STALE = "stale"  # timestamp too old
    FUTURE = "future"  # timestamp too far ahead of our clock
    BAD_TTL = "bad_ttl"  # ttl out of bounds
    SELF = "self"  # our own advert echoed back

    @property
    def ok(self) -> bool:
        return self is Admission.ACCEPTED


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    # Largest accepted difference between an advert's timestamp and our wall clock.
    max_clock_skew: float = 30.0
    # Longest TTL we honour; adverts asking for more are refused.
    max_ttl: float = 600.0


@dataclass(frozen=True, slots=True)
class PeerEntry:
    advert: Advert
    # Local monotonic time the advert was accepted.
    received_at: float

    @property
    def peer_id(self) -> PeerId:
        return self.advert.peer_id

    @property
    def expires_at(self) -> float:
        return self.received_at + self.advert.ttl

    def age(self, now: float) -> float:
        return now - self.received_at


@dataclass(frozen=True, slots=True)
class PeerView:
    """Immutable snapshot: peers by id, and which peers offer which model digest."""

    entries: immutables.Map[PeerId, PeerEntry] = field(default_factory=immutables.Map)
    # Last accepted (sequence, local time) per author; outlives entries (replay protection).
    sequences: immutables.Map[PeerId, tuple[int, float]] = field(default_factory=immutables.Map)
    by_digest: immutables.Map[Digest, frozenset[PeerId]] = field(default_factory=immutables.Map)
    # This node's own peer id (its echoed adverts are not admitted), if any.
    own: PeerId | None = None
    # Earliest time an entry or a remembered sequence can be dropped: `expire` is free before it.
    next_expiry: float = math.inf

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PeerEntry]:
        return iter(self.entries.values())

    def __contains__(self, peer: object) -> bool:
        return peer in self.entries

    def get(self, peer: PeerId) -> PeerEntry | None:
        return self.entries.get(peer)

    def providers(self, digest: Digest) -> list[PeerEntry]:
        """Peers whose current advert offers `digest` (sorted by peer id, deterministic)."""
        ids = self.by_digest.get(digest, frozenset())
        return [self.entries[p] for p in sorted(ids, key=lambda p: p.value)]

    def holders(self, digest: Digest) -> list[PeerEntry]:
        """Peers that store the registry version `digest` (they serve its blobs)."""
        return [e for e in self if digest in e.advert.stored]

    def providers_of_name(self, name: str) -> list[PeerEntry]:
        return [e for e in self if any(m.name == name for m in e.advert.models)]

    def last_sequence(self, peer: PeerId) -> int | None:
        seq = self.sequences.get(peer)
        return None if seq is None else seq[0]


def check(view: PeerView, advert: Advert, wall: float, policy: ViewPolicy) -> Admission:
    """Would `advert` be admitted? (No state change; validators call this.)"""
    if view.own is not None and advert.peer_id == view.own:
        return Admission.SELF
    if advert.timestamp < wall - policy.max_clock_skew:
        return Admission.STALE
    if advert.timestamp > wall + policy.max_clock_skew:
        return Admission.FUTURE
    if not 0 < advert.ttl <= policy.max_ttl:
        return Admission.BAD_TTL
    last = view.sequences.get(advert.peer_id)
    if last is not None and advert.sequence <= last[0]:
        return Admission.REPLAYED
    return Admission.ACCEPTED


def _reindex(by_digest: immutables.Map[Digest, frozenset[PeerId]], peer: PeerId,
             old: set[Digest], new: set[Digest]) -> immutables.Map[Digest, frozenset[PeerId]]:
    if old == new:
        return by_digest
    m = by_digest.mutate()
    for digest in old - new:
        rest = m.get(digest, frozenset()) - {peer}
        if rest:
            m[digest] = rest
        else:
            del m[digest]
    for digest in new - old:
        m[digest] = m.get(digest, frozenset()) | {peer}
    return m.finish()


def _digests(entry: PeerEntry | None) -> set[Digest]:
    return set() if entry is None else {m.digest for m in entry.advert.models}


def admit(view: PeerView, advert: Advert, now: float, wall: float,
          policy: ViewPolicy = ViewPolicy()) -> tuple[PeerView, Admission]:
    """The view after receiving `advert` at local time `now` (wall clock `wall`)."""
    verdict = check(view, advert, wall, policy)
    if not verdict.ok:
        return view, verdict
    peer = advert.peer_id
    old = view.entries.get(peer)
    entry = PeerEntry(advert, now)
    return PeerView(
        entries=view.entries.set(peer, entry),
        sequences=view.sequences.set(peer, (advert.sequence, now)),
        by_digest=_reindex(view.by_digest, peer, _digests(old), _digests(entry)),
        own=view.own,
        next_expiry=min(view.next_expiry, entry.expires_at),
    ), verdict


def expire(view: PeerView, now: float, policy: ViewPolicy = ViewPolicy()) -> PeerView:
    """Drop peers whose advert outlived its TTL; forget sequences that can no longer be replayed."""
    if now < view.next_expiry:
        return view
    gone = [e for e in view.entries.values() if e.expires_at <= now]
    # A replay must carry a fresh timestamp: once max_clock_skew (both ways) has passed
    # since we accepted a sequence, any replay of it is STALE anyway.
    forget = [p for p, (_, at) in view.sequences.items()
              if p not in view.entries and now - at > 2 * policy.max_clock_skew]
    entries, by_digest, sequences = view.entries, view.by_digest, view.sequences
    for entry in gone:
        entries = entries.delete(entry.peer_id)
        by_digest = _reindex(by_digest, entry.peer_id, _digests(entry), set())
    for peer in forget:
        sequences = sequences.delete(peer)
    forgettable = (at + 2 * policy.max_clock_skew for p, (_, at) in sequences.items()
                   if p not in entries)
    next_expiry = min((*(e.expires_at for e in entries.values()), *forgettable), default=math.inf)
    return PeerView(entries, sequences, by_digest, view.own, next_expiry)
