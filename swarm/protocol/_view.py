"""The peer view: a frozen, queryable snapshot of the swarm, built from adverts.

Pure functions over immutable state (`immutables.Map`, O(log n) updates with
structural sharing): `admit(view, advert, ...)` returns the next view and why
the advert was or was not taken; `expire(view, now)` drops silent peers. The
scheduler reads a PeerView; the membership service swaps in new ones.

Replay protection: an advert must be fresh (its timestamp within
`max_clock_skew` of our wall clock) and carry a sequence number above the last
one accepted from its author. Sequence memory outlives expiry for as long as a
replayed advert could still look fresh.

Space: identities are free, so authors nobody vouches for ("untrusted": trust 0,
the default for everyone) may hold at most `max_untrusted` entries. A new
untrusted author is refused (FULL) when they do; entries already in the view
are never pushed out by newcomers, so a flood of fresh identities cannot evict
honest peers. Trust (`admit(..., trust=)`, > 0: e.g. bonded stake) exempts an
author from the bound: staking ranks view space through it.
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
    FULL = "view_full"  # a new untrusted author, and untrusted authors fill their share

    @property
    def ok(self) -> bool:
        return self is Admission.ACCEPTED


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    # Largest accepted difference between an advert's timestamp and our wall clock.
    max_clock_skew: float = 30.0
    # Longest TTL we honour; adverts asking for more are refused.
    max_ttl: float = 600.0
    # Most entries of untrusted authors (trust 0) the view holds: a flood of fresh
    # identities stops here. Full views are the design up to a few thousand providers.
    max_untrusted: int = 4096


@dataclass(frozen=True, slots=True)
class PeerEntry:
    advert: Advert
    # Local monotonic time the advert counts as received (when it was accepted, or
    # earlier for one that was already old when a snapshot brought it).
    received_at: float
    # The advert's signed wire form, when known (what snapshots serve to joining peers).
    signed: bytes = b""
    # Admitted with trust > 0 (not counted against max_untrusted).
    trusted: bool = False

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
    # Entries of untrusted authors (bounded by ViewPolicy.max_untrusted).
    untrusted: int = 0

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

    def offers(self) -> list[tuple[str, Digest, int]]:
        """(name, digest, providers) of every model version offered, most providers first.

        Reads the digest index (cheap in a large view); the name is the one the
        lowest peer id gives the digest.
        """
        out = []
        for digest, peers in self.by_digest.items():
            first = self.entries[min(peers, key=lambda p: p.value)].advert.offer(digest)
            out.append((first.name if first is not None else "?", digest, len(peers)))
        return sorted(out, key=lambda o: (-o[2], o[0], o[1].hex))

    def describe_offers(self, limit: int = 6) -> str:
        """What the view serves, for error messages: `the swarm serves NAME@DIGEST (2 providers), ...`."""
        offers = self.offers()
        if not offers:
            return f"no provider is in the view ({len(self)} peers)"
        shown = ", ".join(f"{n}@{d} ({c} provider{'s' if c != 1 else ''})"
                          for n, d, c in offers[:limit])
        more = f" and {len(offers) - limit} more" if len(offers) > limit else ""
        return f"the swarm serves {shown}{more}"

    def last_sequence(self, peer: PeerId) -> int | None:
        seq = self.sequences.get(peer)
        return None if seq is None else seq[0]


def check(view: PeerView, advert: Advert, wall: float, policy: ViewPolicy,
          trust: float = 0.0) -> Admission:
    """Would `advert` be admitted, its author trusted `trust`? (No state change.)"""
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
    if (trust <= 0 and advert.peer_id not in view.entries
            and view.untrusted >= policy.max_untrusted):
        return Admission.FULL
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
          policy: ViewPolicy = ViewPolicy(), *, trust: float = 0.0, signed: bytes = b"",
          age: float = 0.0) -> tuple[PeerView, Admission]:
    """The view after receiving `advert` at local time `now` (wall clock `wall`).

    `trust` > 0 exempts its author from `max_untrusted`; `signed` is kept for snapshots;
    `age` (seconds) makes the entry count as received that long ago, so an advert that
    was already old when it arrived does not outlive its TTL.
    """
    verdict = check(view, advert, wall, policy, trust)
    if not verdict.ok:
        return view, verdict
    peer = advert.peer_id
    old = view.entries.get(peer)
    entry = PeerEntry(advert, now - age, signed, trusted=trust > 0)
    untrusted = view.untrusted + (not entry.trusted) - (old is not None and not old.trusted)
    return PeerView(
        entries=view.entries.set(peer, entry),
        sequences=view.sequences.set(peer, (advert.sequence, now)),
        by_digest=_reindex(view.by_digest, peer, _digests(old), _digests(entry)),
        own=view.own,
        next_expiry=min(view.next_expiry, entry.expires_at),
        untrusted=untrusted,
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
    untrusted = view.untrusted - sum(not e.trusted for e in gone)
    return PeerView(entries, sequences, by_digest, view.own, next_expiry, untrusted)
