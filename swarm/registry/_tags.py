"""Tags: signed, sequenced pointers from `namespace/name:tag` to a manifest digest.

`sign_tag`/`verify_tag` are the wire form (a `SignedTag` over the exact
`TagRecord` payload bytes, like adverts). `apply_tag(state, record, allowlist=...)`
is the pure state machine every node runs over the records gossip delivers:

- Only the namespace owner's key moves a tag. An allowlist from config binds a
  namespace to a set of keys; a namespace not in it is bound, trust on first
  use, to the first key whose valid record this node accepts for it, and other
  keys are refused (UNAUTHORIZED, for the caller to log and count). Bindings
  live in the TagState, so they are part of the pure state. (Two nodes that
  first see different keys for a namespace bind differently; the allowlist is
  the remedy.)
- Per (name, tag) the highest sequence wins; older sequences and replays are
  refused (STALE), the current record again is a DUPLICATE. Two different
  records with the same sequence are ordered by (target, timestamp, publisher),
  so every node converges on the same winner whatever the arrival order.
- Each tag keeps the last HISTORY_LIMIT targets it accepted, so `previous`
  can name the version to roll back to. History is what this node saw: one
  that joined late knows fewer earlier targets.
- What a key can make every node hold is bounded (`TagLimits`): namespaces it
  binds on first use, tags per namespace, and tags in all (keys cost nothing to
  make, so only the last bounds the total). A record that would start a new tag
  or binding past a bound is refused (LIMITED); tags already held always move.

A target is always a manifest digest, never another tag: a client that tags
`stable` as `v1` resolves `v1` to its digest when it publishes the record.
A bare name (no tag, no digest) means the tag `latest`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field

import immutables

from swarm._errors import ConfigError, IntegrityError, ModelNotFoundError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef
from swarm.protocol import Identity, open_envelope, seal

__all__ = [
    "DEFAULT_TAG",
    "HISTORY_LIMIT",
    "TAG_DOMAIN",
    "Outcome",
    "TagEntry",
    "TagLimits",
    "TagRecord",
    "TagState",
    "TagVersion",
    "apply_tag",
    "owner_keys",
    "previous",
    "resolve",
    "sign_tag",
    "verify_tag",
]

TAG_DOMAIN = b"swarm/tag/v1\0"
MAX_TAG_BYTES = 4096
HISTORY_LIMIT = 32
DEFAULT_TAG = "latest"
_MAX_SEQUENCE = 2**64 - 1

Allowlist = Mapping[str, Set[bytes]]


def owner_keys(keys: Iterable[bytes | str]) -> frozenset[bytes]:
    """A namespace's owner keys as an allowlist holds them: raw 32-byte Ed25519 public
    keys, given raw or in hex (as `swarm model key` prints and node configs hold them)."""
    out = set()
    for key in keys:
        if isinstance(key, str):
            try:
                key = bytes.fromhex(key)
            except ValueError:
                raise ConfigError(f"allowlist key {key!r} is not hex") from None
        if len(key) != 32:
            raise ConfigError(
                f"allowlist keys are 32-byte Ed25519 public keys, not {len(key)} bytes")
        out.add(key)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class TagRecord:
    """`name:tag` points at manifest `target`, said by `publisher` at `sequence`."""

    # Raw 32-byte Ed25519 public key; it signs the record.
    publisher: bytes
    # "namespace/name".
    name: str
    tag: str
    target: Digest
    sequence: int
    # Unix seconds (stored to the millisecond); informational, order comes from `sequence`.
    timestamp: float

    def __post_init__(self) -> None:
        ModelRef(self.name, tag=self.tag)  # validates name and tag
        if len(self.publisher) != 32:
            raise ValueError("publisher must be a 32-byte Ed25519 public key")
        if not 0 <= self.sequence <= _MAX_SEQUENCE:
            raise ValueError("sequence must fit in 64 unsigned bits")
        object.__setattr__(self, "timestamp", round(self.timestamp * 1000) / 1000)

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, tag=self.tag)


@dataclass(frozen=True, slots=True)
class TagVersion:
    """One target a tag pointed at."""

    sequence: int
    target: Digest
    timestamp: float


@dataclass(frozen=True, slots=True)
class TagEntry:
    """A tag's current record and its recent history (oldest first, current last)."""

    record: TagRecord
    history: tuple[TagVersion, ...]

    @property
    def target(self) -> Digest:
        return self.record.target

    @property
    def sequence(self) -> int:
        return self.record.sequence


class Outcome(enum.Enum):
    """What `apply_tag` did with a record."""

    ACCEPTED = "accepted"  # the tag now points at the record's target
    BOUND = "bound"  # accepted, and the namespace bound to this key on first use
    DUPLICATE = "duplicate"  # the current record again (a gossip echo)
    STALE = "stale"  # sequence not above the current one: an old record or a replay
    UNAUTHORIZED = "unauthorized"  # the key does not own the namespace
    LIMITED = "limited"  # a new tag or binding past a TagLimits bound

    @property
    def ok(self) -> bool:
        return self in (Outcome.ACCEPTED, Outcome.BOUND)


@dataclass(frozen=True, slots=True)
class TagLimits:
    """Bounds on the tags a node holds (0: no bound). Only new tags and new bindings
    are counted against them: a tag already held always moves."""

    # Namespaces one key may bind on first use (allowlisted namespaces do not count).
    namespaces_per_key: int = 16
    # Tags one namespace may hold.
    tags_per_namespace: int = 64
    # Tags held in all (new tags in allowlisted namespaces are not refused by it).
    tags: int = 4096

    def __post_init__(self) -> None:
        if min(self.namespaces_per_key, self.tags_per_namespace, self.tags) < 0:
            raise ValueError("tag limits must be >= 0 (0: no bound)")


@dataclass(frozen=True, slots=True)
class TagState:
    """Immutable snapshot of every tag this node knows and of its namespace bindings."""

    tags: immutables.Map[tuple[str, str], TagEntry] = field(default_factory=immutables.Map)
    # Namespace -> key bound on first use (namespaces in the allowlist are never bound here).
    bindings: immutables.Map[str, bytes] = field(default_factory=immutables.Map)
    # What TagLimits counts, kept up to date rather than recounted per record (the gossip
    # validator runs apply_tag on every message): bindings per key, tags per namespace.
    bound_by_key: immutables.Map[bytes, int] = field(default_factory=immutables.Map)
    tags_by_namespace: immutables.Map[str, int] = field(default_factory=immutables.Map)

    def get(self, name: str, tag: str) -> TagEntry | None:
        return self.tags.get((name, tag))

    def tags_of(self, name: str) -> dict[str, TagEntry]:
        """Tag -> entry for one model name."""
        return {t: e for (n, t), e in self.tags.items() if n == name}

    def owner(self, namespace: str, allowlist: Allowlist) -> Set[bytes]:
        """Keys that may move tags in `namespace` now (empty: anyone may claim it)."""
        if namespace in allowlist:
            return allowlist[namespace]
        bound = self.bindings.get(namespace)
        return frozenset() if bound is None else frozenset({bound})

    def __iter__(self) -> Iterator[TagEntry]:
        return iter(self.tags.values())

    def __len__(self) -> int:
        return len(self.tags)


def _rank(record: TagRecord) -> tuple[int, str, float, bytes]:
    return record.sequence, record.target.hex, record.timestamp, record.publisher


def _full(count: int, bound: int) -> bool:
    return bound > 0 and count >= bound


def apply_tag(state: TagState, record: TagRecord, *, allowlist: Allowlist,
              limits: TagLimits = TagLimits()) -> tuple[TagState, Outcome]:
    """The state after a verified `record` arrives, and what happened to it.

    `allowlist` maps namespaces to the keys that own them (from config);
    other namespaces are bound on first use, within `limits`. The record must come
    from `verify_tag`: this function decides, it does not check signatures.
    """
    namespace = record.namespace
    bindings, bound_by_key = state.bindings, state.bound_by_key
    tags_by_namespace = state.tags_by_namespace
    outcome = Outcome.ACCEPTED
    binds = False
    if namespace in allowlist:
        if record.publisher not in allowlist[namespace]:
            return state, Outcome.UNAUTHORIZED
    else:
        bound = bindings.get(namespace)
        if bound is None:
            binds = True
        elif bound != record.publisher:
            return state, Outcome.UNAUTHORIZED

    key = (record.name, record.tag)
    entry = state.tags.get(key)
    version = TagVersion(record.sequence, record.target, record.timestamp)
    if entry is None:
        held = tags_by_namespace.get(namespace, 0)
        # Allowlisted namespaces are the operator's: strangers filling the node cannot
        # stop them (the per-namespace bound still holds).
        total_full = namespace not in allowlist and _full(len(state.tags), limits.tags)
        if (total_full or _full(held, limits.tags_per_namespace)
                or (binds and _full(bound_by_key.get(record.publisher, 0),
                                    limits.namespaces_per_key))):
            return state, Outcome.LIMITED
        if binds:
            bindings = bindings.set(namespace, record.publisher)
            bound_by_key = bound_by_key.set(record.publisher,
                                            bound_by_key.get(record.publisher, 0) + 1)
            outcome = Outcome.BOUND
        tags_by_namespace = tags_by_namespace.set(namespace, held + 1)
        history: tuple[TagVersion, ...] = (version,)
    elif record == entry.record:
        return state, Outcome.DUPLICATE
    elif _rank(record) <= _rank(entry.record):
        return state, Outcome.STALE
    elif record.sequence == entry.sequence:
        # Same sequence, different record (equivocation): the deterministic winner replaces it.
        history = (*entry.history[:-1], version)
    else:
        history = (*entry.history, version)[-HISTORY_LIMIT:]
    return TagState(state.tags.set(key, TagEntry(record, history)), bindings,
                    bound_by_key, tags_by_namespace), outcome


def resolve(state: TagState, ref: ModelRef) -> Digest:
    """The manifest digest `ref` names: its digest, or its tag's target (bare name: `latest`).

    Raises ModelNotFoundError for a tag this node does not know.
    """
    if ref.digest is not None:
        return ref.digest
    tag = ref.tag if ref.tag is not None else DEFAULT_TAG
    entry = state.get(ref.name, tag)
    if entry is None:
        raise ModelNotFoundError(f"no tag {ref.name}:{tag} is known")
    return entry.target


def previous(state: TagState, name: str, tag: str) -> Digest | None:
    """The target to roll `name:tag` back to: the latest earlier target that differs from the
    current one, or None if the tag is unknown or history holds no other target."""
    entry = state.get(name, tag)
    if entry is None:
        return None
    for version in reversed(entry.history[:-1]):
        if version.target != entry.target:
            return version.target
    return None


# -- wire form -----------------------------------------------------------------------------


def sign_tag(record: TagRecord, identity: Identity) -> bytes:
    """SignedTag bytes; `identity` must be the record's publisher."""
    if identity.public_key != record.publisher:
        raise ValueError("a tag record is signed by its publisher's key")
    payload = registry_pb2.TagRecord(
        publisher=record.publisher, name=record.name, tag=record.tag, target=str(record.target),
        sequence=record.sequence, timestamp_unix_ms=round(record.timestamp * 1000),
    ).SerializeToString(deterministic=True)
    return seal(registry_pb2.SignedTag, TAG_DOMAIN, payload, identity)


def verify_tag(data: bytes) -> TagRecord:
    """Parse and verify SignedTag bytes; raises IntegrityError on anything wrong."""
    msg, _ = open_envelope(data, registry_pb2.SignedTag, registry_pb2.TagRecord,
                           domain=TAG_DOMAIN, max_bytes=MAX_TAG_BYTES, what="tag record",
                           key=lambda m: m.publisher)
    try:
        return TagRecord(publisher=msg.publisher, name=msg.name, tag=msg.tag,
                         target=Digest.parse(msg.target), sequence=msg.sequence,
                         timestamp=msg.timestamp_unix_ms / 1000)
    except ValueError as exc:
        raise IntegrityError(f"malformed tag record: {exc}") from exc
