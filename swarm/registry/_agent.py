"""RegistryAgent: a node's registry brain — tags over gossip, resolution, replication.

- Tags arrive on the gossip topic `swarm/tags/v1`. The transport-side validator
  REJECTs records that do not verify (forged or malformed: the forwarding peer
  is penalised) and IGNOREs stale, duplicate and unauthorized ones (an
  unauthorized key moving someone else's tag is logged and counted). Accepted
  records go through the pure `apply_tag`; the agent keeps the TagState and the
  signed bytes of every current record, so peers can sync tags from it (gossip
  has no memory: a peer that joins pulls a snapshot of them from each peer it connects
  to, through the same validator, and a node also syncs them with ListModels).
- With a store, the signed records of every tag's history are persisted beside it
  (TagStore) and reloaded by `load()` at start, each re-verified and replayed through
  `apply_tag` like a record from a peer: a restarted node serves what its tags named,
  can roll back, and syncs what is newer. A record that fails is dropped and logged.
- `resolve(ref)` answers what `acme/classifier:stable` names now; `watch(ref)`
  yields each new target (the node rolls out/back on it).
- Replication: every pinned version (the current and previous target of every
  tag) should be stored by `replication_factor` live nodes. The pure
  `volunteer` decides which under-replicated versions this node fetches; the
  loop waits a random jitter first and looks again, so nodes that noticed the
  same deficit do not all fetch at once.

The counters dict is for the node's metrics; every key is present from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarm._clock import SYSTEM_CLOCK, Clock
from swarm._errors import IntegrityError, ModelNotFoundError, SwarmError, UnavailableError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef
from swarm.protocol import Gossip, GossipMessage, PeerChannels, PeerView, SnapshotPuller, Validation
from swarm.registry._client import CHANNEL_OPTIONS, RegistryClient
from swarm.registry._fetch import FetchConfig, FetchStats, Progress, Source, fetch_version
from swarm.registry._manifest import Manifest
from swarm.registry._manifests import ManifestStore
from swarm.registry._tags import (
    DEFAULT_TAG,
    Outcome,
    TagLimits,
    TagRecord,
    TagState,
    TagVersion,
    apply_tag,
    previous,
    resolve,
    verify_tag,
)
from swarm.registry._tagstore import TagStore

__all__ = [
    "TAG_TOPIC",
    "RegistryAgent",
    "RegistryConfig",
    "pinned_versions",
    "under_replicated",
    "volunteer",
]

log = logging.getLogger("swarm.registry")

# Seconds before the first tag sync is tried, doubled after each failure up to the max.
_FIRST_SYNC_RETRY = 0.1
_FIRST_SYNC_RETRY_MAX = 5.0

TAG_TOPIC = "swarm/tags/v1"
# Seconds between looks for new connections to pull tag snapshots from.
_SNAPSHOT_CHECK_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    # Live nodes that should store each pinned version (current and previous tag targets).
    replication_factor: int = 3
    # Namespace -> the keys (raw Ed25519 public keys) that own it. Namespaces not listed
    # are bound to the first key seen publishing in them (trust on first use).
    allowlist: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    # Take part in keeping pinned versions replicated.
    volunteer: bool = True
    # Seconds between looks for under-replicated versions (each stretched by +/- 50%).
    replicate_interval: float = 30.0
    # Longest random wait before fetching a volunteered version (others may take it first).
    jitter: float = 10.0
    # Seconds between tag syncs from a random peer (records that gossip did not bring).
    sync_interval: float = 60.0
    fetch: FetchConfig = field(default_factory=FetchConfig)
    # Bounds on the tags this node holds (0: no bound); records past them are refused
    # (RESOURCE_EXHAUSTED to a publisher, ignored from gossip) and counted as tags_limited.
    # Namespaces one key may bind on first use (allowlisted ones do not count).
    max_namespaces_per_key: int = 16
    # Tags one namespace may hold.
    max_tags_per_namespace: int = 64
    # Tags held in all: keys cost nothing, so only this bounds what strangers can add.
    max_tags: int = 4096

    def __post_init__(self) -> None:
        if self.replication_factor < 1:
            raise ValueError("replication_factor must be >= 1")
        if self.replicate_interval <= 0 or self.jitter < 0 or self.sync_interval <= 0:
            raise ValueError("intervals must be > 0 and jitter >= 0")
        self.limits  # noqa: B018 - validates the bounds
        # Frozen all the way down: the config may be shared between components.
        object.__setattr__(self, "allowlist", types.MappingProxyType(
            {ns: frozenset(keys) for ns, keys in self.allowlist.items()}))

    @property
    def limits(self) -> TagLimits:
        return TagLimits(self.max_namespaces_per_key, self.max_tags_per_namespace, self.max_tags)

    @classmethod
    def local(cls, **overrides: Any) -> RegistryConfig:
        """Short intervals for tests and local demos."""
        return dataclasses.replace(
            cls(replicate_interval=1.0, jitter=0.2, sync_interval=2.0), **overrides)


class RegistryPeer(Source, Protocol):
    """A connection to a peer's registry service (RegistryClient is the real one)."""

    async def list_models(self, name: str = "") -> registry_pb2.ListModelsResponse: ...

    async def close(self) -> None: ...


# Opens a connection to a peer's registry service by gRPC address.
Connect = Callable[[str], RegistryPeer]


# -- pure decisions ------------------------------------------------------------------------


def pinned_versions(state: TagState) -> set[Digest]:
    """Versions the swarm keeps replicated: every tag's target and the one it would roll back to."""
    pinned: set[Digest] = set()
    for (name, tag), entry in state.tags.items():
        pinned.add(entry.target)
        back = previous(state, name, tag)
        if back is not None:
            pinned.add(back)
    return pinned


def _holders(view: PeerView, digest: Digest) -> int:
    return sum(1 for e in view.holders(digest) if not e.advert.draining)


def under_replicated(view: PeerView, digest: Digest, replication_factor: int) -> bool:
    """Fewer than `replication_factor` live peers in `view` store `digest`."""
    return _holders(view, digest) < replication_factor


def volunteer(view: PeerView, pinned: Set[Digest], own_stored: Set[Digest],
              replication_factor: int, rng: random.Random) -> list[Digest]:
    """Pinned versions this node should fetch now, fewest holders first.

    A version qualifies if this node does not store it, at least one live
    (non-draining) peer does (someone to fetch from), and fewer than
    `replication_factor` do. Every node that sees the same deficit makes this
    same decision, so each volunteers with probability deficit / candidates
    (candidates: the live peers that do not hold it, plus this node): about
    `deficit` nodes step forward in expectation, not all of them.
    """
    live = sum(1 for e in view if not e.advert.draining)
    chosen: list[tuple[int, str, Digest]] = []
    for digest in sorted(pinned, key=lambda d: d.hex):
        if digest in own_stored:
            continue
        holders = _holders(view, digest)
        if holders == 0 or holders >= replication_factor:
            continue
        deficit = replication_factor - holders
        candidates = live - holders + 1
        if rng.random() < deficit / candidates:
            chosen.append((holders, digest.hex, digest))
    return [digest for _, _, digest in sorted(chosen)]


# -- the agent -----------------------------------------------------------------------------


class _Stopped(Exception):
    """Raised inside the agent's TaskGroup to end its tasks on stop()."""


class RegistryAgent:
    """Tags over gossip, resolution and watches, and volunteer replication, for one node.

    `view` returns the current PeerView (Membership.view); `connect` opens a
    peer's registry service by address; `on_stored(digest)` runs when a fetch
    completes a version here (the node re-advertises what it stores). Every
    random choice (jitter, volunteering, sync peer, holder order) draws from
    `rng`; every wait (jitter, sync and replication periods) is a sleep on `clock`
    (a FakeClock in tests). The agent takes no timestamps.

    Without a store (`manifests=None`, a client's light peer) it only tracks signed
    tags: it receives, validates and syncs them, and resolves references; it never
    fetches or volunteers.
    """

    def __init__(self, gossip: Gossip, manifests: ManifestStore | None, *,
                 view: Callable[[], PeerView], config: RegistryConfig = RegistryConfig(),
                 rng: random.Random | None = None,
                 connect: Connect | None = None,
                 on_stored: Callable[[Digest], None] = lambda digest: None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if manifests is None and config.volunteer:
            raise ValueError("an agent without a store cannot volunteer to store versions")
        self.config = config
        self._gossip = gossip
        self._manifests = manifests
        self._view = view
        self._rng = rng or random.Random()
        # Peers' registry services are dialled over TLS pinned to the advert's peer id.
        self.channels = PeerChannels(options=CHANNEL_OPTIONS)
        self._connect: Connect = connect or self._pinned
        self._on_stored = on_stored
        self._clock = clock
        self._state = TagState()
        self._signed: dict[tuple[str, str], bytes] = {}
        # Persistence: the SignedTag bytes of each tag's history (what a restart replays),
        # and the tags changed since they were last written.
        self._tag_store = TagStore(manifests.blobs.root) if manifests is not None else None
        self._history: dict[tuple[str, str], dict[TagVersion, bytes]] = {}
        self._unsaved: set[tuple[str, str]] = set()
        # Counts changes: a save names the state it wrote, so an older one never wins.
        self._generation = 0
        self._save_wanted = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._loaded = False
        self._changed = asyncio.Event()
        self._fetch_locks: dict[Digest, asyncio.Lock] = {}
        self._stop = asyncio.Event()
        self._closed = False
        self.counters: dict[str, int] = {
            "tags_accepted": 0, "tags_bound": 0, "tags_duplicate": 0, "tags_stale": 0,
            "tags_unauthorized": 0, "tags_rejected": 0, "tags_published": 0,
            "tags_limited": 0, "tags_loaded": 0, "tags_load_dropped": 0, "tag_save_failures": 0,
            "tag_syncs": 0, "tag_sync_failures": 0,
            "fetches_completed": 0, "fetches_failed": 0, "bytes_fetched": 0,
            "chunks_rejected": 0, "manifests_rejected": 0, "source_failures": 0,
        }
        gossip.set_validator(TAG_TOPIC, self.validate)
        # Push-pull on join: serve our signed records, pull each new peer's (validated).
        gossip.set_snapshot(TAG_TOPIC, lambda: list(self._signed.copy().values()))
        self._snapshots = SnapshotPuller(
            gossip, TAG_TOPIC, lambda msg: self.receive(msg.data, origin=str(msg.received_from)),
            interval=_SNAPSHOT_CHECK_INTERVAL)

    # -- TagBook (the service's view of us) --------------------------------------------------

    @property
    def state(self) -> TagState:
        """The current tag snapshot (immutable)."""
        return self._state

    @property
    def allowlist(self) -> Mapping[str, Set[bytes]]:
        return self.config.allowlist

    @property
    def synced(self) -> asyncio.Event:
        """Set once a peer's snapshot of tag records is in (see SnapshotPuller)."""
        return self._snapshots.synced

    def signed_record(self, name: str, tag: str) -> bytes | None:
        """SignedTag bytes of the current record of `name:tag`, if known."""
        return self._signed.get((name, tag))

    # -- tags ----------------------------------------------------------------------------------

    def validate(self, msg: GossipMessage) -> Validation:
        """Gossip validator for TAG_TOPIC (pure over the current state; may run on another thread)."""
        try:
            record = verify_tag(msg.data)
        except IntegrityError as exc:
            self._count_rejected(exc, str(msg.received_from))
            return Validation.REJECT
        _, outcome = apply_tag(self._state, record, allowlist=self.config.allowlist,
                               limits=self.config.limits)
        if outcome.ok:
            return Validation.ACCEPT
        self._count(record, outcome, str(msg.received_from))
        return Validation.IGNORE

    def receive(self, signed: bytes, *, origin: str = "") -> Outcome | None:
        """Apply a SignedTag (from gossip or a sync); None if it does not verify."""
        try:
            record = verify_tag(signed)
        except IntegrityError as exc:
            self._count_rejected(exc, origin)
            return None
        return self._apply(record, signed, origin)

    async def publish(self, signed: bytes, *,
                      check: Callable[[TagRecord], Awaitable[None]] | None = None) -> Outcome:
        """Apply a SignedTag here and, if it moved the tag, gossip it.

        Raises IntegrityError if it does not verify; `check(record)` may refuse
        it by raising before it is applied. UNAUTHORIZED and STALE records are
        returned as such and not gossiped.
        """
        try:
            record = verify_tag(signed)
        except IntegrityError as exc:
            self._count_rejected(exc, "local")
            raise
        if check is not None:
            await check(record)
        outcome = self._apply(record, signed, "local")
        if outcome.ok:
            await self._save()  # on disk before the publisher hears it was accepted
            await self._gossip.publish(TAG_TOPIC, signed)
            self.counters["tags_published"] += 1
        return outcome

    def _apply(self, record: TagRecord, signed: bytes, origin: str) -> Outcome:
        self._state, outcome = apply_tag(self._state, record, allowlist=self.config.allowlist,
                                         limits=self.config.limits)
        self._count(record, outcome, origin)
        if outcome.ok:
            self._keep(record, signed)
            log.info("tag moved", extra={"tag": str(record.ref), "target": record.target.short,
                                         "sequence": record.sequence, "origin": origin})
            self._fire()
        return outcome

    def _keep(self, record: TagRecord, signed: bytes) -> None:
        """Remember an accepted record's bytes: current, and in its tag's history."""
        key = (record.name, record.tag)
        self._signed[key] = signed
        entry = self._state.get(record.name, record.tag)
        assert entry is not None  # just accepted
        held = self._history.get(key, {})
        held[entry.history[-1]] = signed
        # The history apply_tag keeps (trimmed, equivocations replaced) is what is stored.
        self._history[key] = {v: held[v] for v in entry.history if v in held}
        if self._tag_store is not None:
            self._generation += 1
            self._unsaved.add(key)
            self._save_wanted.set()

    async def _save(self) -> None:
        """Write the tags changed since the last save (one save at a time, latest state)."""
        store = self._tag_store
        if store is None:
            return
        async with self._save_lock:
            for key in sorted(self._unsaved):
                self._unsaved.discard(key)
                records = list(self._history.get(key, {}).values())
                try:
                    # A save cancelled here (the node stopping) still finishes in its
                    # thread; the generation keeps it from overwriting a later one.
                    await asyncio.to_thread(store.save, *key, records,
                                            generation=self._generation)
                except OSError as exc:  # a full disk must not stop the node from serving
                    self._unsaved.add(key)  # tried again with the next change
                    self.counters["tag_save_failures"] += 1
                    log.error("cannot save tag records", extra={
                        "tag": f"{key[0]}:{key[1]}", "error": str(exc)})
                except BaseException:
                    self._unsaved.add(key)
                    raise

    async def load(self) -> int:
        """Reload the tag records saved beside the store (once; `run` calls it too).

        Each record is re-verified and replayed through apply_tag, as if a peer sent
        it: a signature that fails, or a record the allowlist or limits now refuse,
        is dropped and logged. Returns how many records were accepted.
        """
        store = self._tag_store
        if store is None or self._loaded:
            return 0
        self._loaded = True
        stored = await asyncio.to_thread(store.load)
        verified = await asyncio.to_thread(self._verify_stored, stored)
        verified.sort(key=lambda item: (item[0].name, item[0].tag, item[0].sequence))
        loaded = 0
        for record, signed in verified:
            self._state, outcome = apply_tag(self._state, record,
                                             allowlist=self.config.allowlist,
                                             limits=self.config.limits)
            if outcome.ok:
                self._keep(record, signed)
                loaded += 1
            elif outcome not in (Outcome.DUPLICATE, Outcome.STALE):  # superseded is no fault
                self.counters["tags_load_dropped"] += 1
                log.warning("stored tag record refused; dropped", extra={
                    "tag": str(record.ref), "sequence": record.sequence,
                    "outcome": outcome.value})
        self._unsaved.clear()  # just read from disk; rewritten with the next change only
        self._save_wanted.clear()
        self.counters["tags_loaded"] += loaded
        if loaded:
            log.info("tag records loaded", extra={"records": loaded, "tags": len(self._state)})
            self._fire()
        return loaded

    def _verify_stored(self, stored: list[bytes]) -> list[tuple[TagRecord, bytes]]:
        out = []
        for signed in stored:
            try:
                out.append((verify_tag(signed), signed))
            except IntegrityError as exc:
                self.counters["tags_load_dropped"] += 1
                log.warning("stored tag record does not verify; dropped", extra={
                    "error": str(exc)})
        return out

    async def _saver(self) -> None:
        while True:
            await self._save_wanted.wait()
            self._save_wanted.clear()
            await self._save()

    def _count(self, record: TagRecord, outcome: Outcome, origin: str) -> None:
        self.counters[f"tags_{outcome.value}"] += 1
        if outcome is Outcome.UNAUTHORIZED:
            log.warning("tag move refused: key does not own the namespace", extra={
                "tag": str(record.ref), "publisher": record.publisher.hex()[:16],
                "target": record.target.short, "origin": origin})
        elif outcome is Outcome.LIMITED:
            # Spam from gossip would flood the log: the counter tells; a publisher is told.
            log.log(logging.WARNING if origin == "local" else logging.DEBUG,
                    "tag refused: past this node's bounds on tags", extra={
                        "tag": str(record.ref), "publisher": record.publisher.hex()[:16],
                        "origin": origin})

    def _count_rejected(self, exc: IntegrityError, origin: str) -> None:
        self.counters["tags_rejected"] += 1
        log.warning("tag record rejected", extra={"error": str(exc), "origin": origin})

    def _fire(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def resolve(self, ref: ModelRef | str) -> Digest:
        """The manifest digest `ref` names now; ModelNotFoundError for an unknown tag."""
        return resolve(self._state, ModelRef.parse(ref) if isinstance(ref, str) else ref)

    def signed_targets(self, ref: ModelRef) -> tuple[Digest, ...] | None:
        """Targets the signed records of `ref`'s tag named (bare name: `latest`), oldest
        first and current last, as far as this agent has seen; None for an unknown tag."""
        entry = self._state.get(ref.name, ref.tag if ref.tag is not None else DEFAULT_TAG)
        return None if entry is None else tuple(v.target for v in entry.history)

    async def watch(self, ref: ModelRef | str) -> AsyncIterator[Digest]:
        """Each target `ref` takes, starting with the current one (if known).

        Only the latest target is reported when several moves happen at once
        (a rollout cares where the tag points, not the path it took). Ends when
        the agent stops.
        """
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        last: Digest | None = None
        while not self._closed:
            changed = self._changed
            try:
                current: Digest | None = resolve(self._state, parsed)
            except ModelNotFoundError:
                current = None
            if current is not None and current != last:
                last = current
                yield current
                continue
            await changed.wait()

    def _pinned(self, address: str) -> RegistryPeer:
        """A RegistryClient to `address`, pinned to the peer that advertises it."""
        for entry in self._view():
            if entry.advert.endpoints and entry.advert.endpoints[0] == address:
                return RegistryClient(address, peer=entry.peer_id, channels=self.channels)
        raise UnavailableError(f"no live peer advertises {address}", code="UNAVAILABLE")

    async def sync(self) -> int:
        """Pull every tag record a random peer holds; returns how many moved a tag here."""
        peers = [e for e in self._view() if e.advert.endpoints]
        if not peers:
            return 0
        address = self._rng.choice(peers).advert.endpoints[0]
        client = self._connect(address)
        try:
            listing = await client.list_models()
        except (SwarmError, OSError) as exc:
            self.counters["tag_sync_failures"] += 1
            log.info("tag sync failed", extra={"peer": address, "error": str(exc)})
            return 0
        finally:
            await client.close()
        self.counters["tag_syncs"] += 1
        moved = 0
        for info in listing.tags:
            if not info.signed.payload:
                continue
            outcome = self.receive(info.signed.SerializeToString(), origin=address)
            moved += outcome is not None and outcome.ok
        return moved

    # -- versions ------------------------------------------------------------------------------

    def holders(self, digest: Digest) -> list[str]:
        """gRPC addresses of live peers that store `digest`, in random order."""
        addresses = [e.advert.endpoints[0] for e in self._view().holders(digest)
                     if e.advert.endpoints and not e.advert.draining]
        self._rng.shuffle(addresses)
        return addresses

    async def ensure(self, digest: Digest, *, progress: Progress | None = None) -> Manifest:
        """The version's manifest, fetching the version from its holders unless stored here.

        Raises UnavailableError when no peer holds it or none could supply it.
        """
        manifests = self._store()
        lock = self._fetch_locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(manifests.complete, digest):
                return await asyncio.to_thread(manifests.get, digest)
            addresses = self.holders(digest)
            if not addresses:
                raise UnavailableError(f"no live peer stores version {digest}")
            return await self._fetch(manifests, digest, addresses, progress)

    def _store(self) -> ManifestStore:
        if self._manifests is None:
            raise UnavailableError("this peer keeps no registry store")
        return self._manifests

    async def _fetch(self, manifests: ManifestStore, digest: Digest, addresses: list[str],
                     progress: Progress | None) -> Manifest:
        stats = FetchStats()
        sources = [self._connect(a) for a in addresses]
        try:
            result = await fetch_version(manifests, digest, sources,
                                         config=self.config.fetch, progress=progress, stats=stats)
        except (SwarmError, OSError) as exc:
            self.counters["fetches_failed"] += 1
            log.warning("fetch failed", extra={"digest": digest.short, "error": str(exc)})
            raise
        finally:
            for source in sources:
                await source.close()
            self.counters["bytes_fetched"] += stats.bytes_fetched
            self.counters["chunks_rejected"] += stats.chunks_rejected
            self.counters["manifests_rejected"] += stats.manifests_rejected
            self.counters["source_failures"] += stats.source_failures
        self.counters["fetches_completed"] += 1
        self._on_stored(digest)
        return result.manifest

    async def replicate_once(self) -> list[Digest]:
        """One replication pass: fetch what `volunteer` picks; returns the versions fetched."""
        pinned = pinned_versions(self._state)
        if not pinned:
            return []
        own = set(await asyncio.to_thread(self._store().complete_versions))
        chosen = volunteer(self._view(), pinned, own, self.config.replication_factor, self._rng)
        fetched = []
        for digest in chosen:
            await self._clock.sleep(self._rng.uniform(0, self.config.jitter))
            # Others may have stepped forward during the jitter.
            if not under_replicated(self._view(), digest, self.config.replication_factor):
                continue
            log.info("volunteering to store a version", extra={"digest": digest.short})
            try:
                await self.ensure(digest)
            except (SwarmError, OSError):
                continue  # counted and logged by _fetch; the next pass tries again
            fetched.append(digest)
        return fetched

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Receive tags, sync them and volunteer replicas until `stop()`."""
        if self._closed:
            raise RuntimeError("a registry agent runs once")
        # Stored records replay first, in order (the node loads before it runs; records
        # gossiped while a standalone agent loads are missed until the next sync).
        await self.load()
        subscription = self._gossip.subscribe(TAG_TOPIC)
        try:
            async with asyncio.TaskGroup() as tg:
                if self._tag_store is not None:
                    tg.create_task(self._saver(), name="registry-tag-saver")
                tg.create_task(self._receiver(subscription), name="registry-tags")
                tg.create_task(self._syncer(), name="registry-sync")
                tg.create_task(self._snapshots.run(), name="registry-tag-snapshots")
                if self.config.volunteer:
                    tg.create_task(self._replicator(), name="registry-replicate")
                await self._stop.wait()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._closed = True
            await self.channels.close()
            self._fire()  # ends watchers
            await self._save()  # what gossip brought since the last save
            # Transports' subscriptions end when the transport closes; ours ends now, so an
            # agent stopped before its node does not keep buffering tags.
            close = getattr(subscription, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def stop(self) -> None:
        """Make `run()` return (its tasks are cancelled; watchers end)."""
        self._stop.set()

    async def _receiver(self, subscription: AsyncIterator[GossipMessage]) -> None:
        async for msg in subscription:
            self.receive(msg.data, origin=str(msg.received_from))

    async def _syncer(self) -> None:
        synced = False
        retry = _FIRST_SYNC_RETRY
        while True:
            # Until a first sync succeeds, try soon and back off: a peer that just joined
            # knows no tags yet (a client's first request by tag waits for them).
            if synced:
                delay = self.config.sync_interval * self._rng.uniform(0.5, 1.5)
            else:
                delay, retry = retry, min(retry * 2, _FIRST_SYNC_RETRY_MAX)
            await self._clock.sleep(delay)
            if any(e.advert.endpoints for e in self._view()):
                before = self.counters["tag_syncs"]
                await self.sync()
                synced = synced or self.counters["tag_syncs"] > before

    async def _replicator(self) -> None:
        while True:
            await self._clock.sleep(
                self.config.replicate_interval * self._rng.uniform(0.5, 1.5))
            await self.replicate_once()

