"""Replication: fetch a version from peers that hold it, verifying everything.

`fetch_version` gets the signed manifest from any source (verified, and its
digest must be the one asked for), then fetches each file's chunks from all
usable sources at once:

- Work is claimed in ranges of chunk indexes: a free range, else an index a
  failed source gave back (lowest first), else the back half of the largest
  range another source still has to send (work stealing), so fast sources do
  more and a slow one does not hold up the tail.
- Every chunk is checked against the manifest's chunk digest as it arrives;
  a source that sends a bad chunk, or breaks the stream protocol, is not asked
  again during this transfer, and its range goes back to the pool. A source
  that fails (drop, stall, error) gives its range back and may retry, up to
  `max_source_failures` times.
- Verified chunks wait in a reorder buffer until the writer, which must append
  in order (BlobWriter), reaches them. Claims never reach beyond
  `max_buffer_bytes` ahead of the writer, which bounds memory and keeps the
  chunk the writer needs claimable by any idle source.
- The BlobStore keeps verified chunks across failures and process restarts: a
  later fetch of the same version resumes after the last verified chunk.

Sources are anything with the `Source` shape; RegistryClient (gRPC) is the real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from swarm._errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    SwarmError,
    UnavailableError,
)
from swarm._types import Digest
from swarm.registry._manifest import FileEntry, Manifest, verify_manifest
from swarm.registry._manifests import ManifestStore
from swarm.registry._store import BlobWriter

__all__ = ["FetchConfig", "FetchResult", "FetchStats", "Progress", "Source", "fetch_version"]

log = logging.getLogger("swarm.registry")

# Chunks at least this large are hashed in a thread (hashlib releases the GIL).
_THREAD_HASH_BYTES = 256 << 10

# progress(bytes held, bytes in the version)
Progress = Callable[[int, int], None]


class Source(Protocol):
    """A peer that serves a version's manifest and blob ranges (unverified)."""

    @property
    def name(self) -> str: ...

    async def manifest(self, digest: Digest) -> bytes:
        """SignedManifest bytes for `digest`."""
        ...

    def chunks(self, blob: Digest, manifest: Digest | None, offset: int,
               length: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """(offset, bytes) pieces of `blob` from `offset` on, `length` bytes (0: to the end)."""
        ...


@dataclass(frozen=True, slots=True)
class FetchConfig:
    # Bytes of consecutive chunks one source is asked for at a time (rounded to whole
    # chunks, at least one). Smaller spreads work more evenly; larger costs fewer requests.
    window_bytes: int = 16 << 20
    # Verified chunks held ahead of the writer at most (rounded to chunks, at least a window).
    max_buffer_bytes: int = 64 << 20
    # Seconds a source may go without sending anything before it counts as failed.
    stall_timeout: float = 20.0
    # Failures (drops, stalls, errors) after which a source is dropped from the transfer;
    # a bad chunk or manifest drops it at once.
    max_source_failures: int = 2
    # Seconds a failed source waits before claiming work again.
    retry_delay: float = 0.2

    def __post_init__(self) -> None:
        if self.window_bytes < 1 or self.max_buffer_bytes < 1:
            raise ValueError("window_bytes and max_buffer_bytes must be >= 1")
        if self.stall_timeout <= 0 or self.max_source_failures < 1 or self.retry_delay < 0:
            raise ValueError("stall_timeout > 0, max_source_failures >= 1, retry_delay >= 0")


@dataclass
class FetchStats:
    """What happened during one or more fetches (counters only grow)."""

    # Verified bytes received from sources, and those already held before (resumed).
    bytes_fetched: int = 0
    bytes_resumed: int = 0
    chunks_fetched: int = 0
    # Chunks that failed verification (tampered or corrupted), and bad manifests.
    chunks_rejected: int = 0
    manifests_rejected: int = 0
    # Dropped streams, stalls and errors, tampering excluded.
    source_failures: int = 0
    # Ranges taken over from a slower source.
    steals: int = 0
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    # Sources no longer used, and why.
    dropped_sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FetchResult:
    digest: Digest
    manifest: Manifest
    stats: FetchStats


class _Misbehaved(Exception):
    """A source sent something no honest source sends; it is not asked again."""


class _Signal:
    """Wakes every waiter on each `fire`. Capture `waiter()` before checking, then wait on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


@dataclass(slots=True, eq=False)  # claims are compared by identity
class _Claim:
    source: str
    # Next chunk the source must deliver, and the end (exclusive; a thief may lower it).
    next: int
    end: int


async def _digest_ok(data: bytes, expected: Digest) -> bool:
    if len(data) >= _THREAD_HASH_BYTES:
        actual = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        actual = hashlib.sha256(data).hexdigest()
    return actual == expected.hex


class _FileTransfer:
    """One blob, fetched from several sources into one BlobWriter."""

    def __init__(self, entry: FileEntry, manifest: Digest, writer: BlobWriter,
                 config: FetchConfig, stats: FetchStats, on_bytes: Callable[[int], None]) -> None:
        self.entry = entry
        self.manifest = manifest
        self.writer = writer
        self.config = config
        self.stats = stats
        self.on_bytes = on_bytes
        self.count = len(entry.chunks)
        self.window = max(1, config.window_bytes // entry.chunk_size)
        self.ahead = max(self.window, config.max_buffer_bytes // entry.chunk_size)
        self.written = writer.next_index
        self.fresh = self.written
        self.returned: list[int] = []
        self.claims: list[_Claim] = []
        self.buffer: dict[int, bytes] = {}
        self.live = 0
        self.failure: BaseException | None = None
        self.signal = _Signal()

    async def run(self, sources: Sequence[Source]) -> None:
        if self.written < self.count:
            self.live = len(sources)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write(), name=f"fetch-write:{self.entry.digest.short}")
                for source in sources:
                    tg.create_task(self._work(source), name=f"fetch:{source.name}")
            if self.failure is not None:
                raise self.failure
        await asyncio.to_thread(self.writer.commit)

    # -- claims ------------------------------------------------------------------------------

    def _take(self, source: str) -> _Claim | None:
        limit = min(self.count, self.written + self.ahead)
        if self.returned:
            first = heapq.heappop(self.returned)
            end = first + 1
            while (self.returned and self.returned[0] == end and end < limit
                   and end - first < self.window):
                heapq.heappop(self.returned)
                end += 1
            claim = _Claim(source, first, end)
        elif self.fresh < limit:
            end = min(self.fresh + self.window, limit)
            claim = _Claim(source, self.fresh, end)
            self.fresh = end
        else:
            victim = max(self.claims, key=lambda c: c.end - c.next, default=None)
            if victim is None or victim.end - victim.next < 2:
                return None
            middle = victim.next + (victim.end - victim.next) // 2
            claim = _Claim(source, middle, victim.end)
            victim.end = middle
            self.stats.steals += 1
        self.claims.append(claim)
        return claim

    def _release(self, claim: _Claim) -> None:
        """Give back what `claim` has not delivered, and forget it."""
        for index in range(claim.next, claim.end):
            heapq.heappush(self.returned, index)
        claim.end = claim.next
        self.claims.remove(claim)
        self.signal.fire()

    # -- sources -----------------------------------------------------------------------------

    async def _work(self, source: Source) -> None:
        failures = 0
        try:
            while self.failure is None and self.written < self.count:
                wake = self.signal.waiter()
                claim = self._take(source.name)
                if claim is None:
                    await wake.wait()
                    continue
                try:
                    await self._stream(source, claim)
                except _Misbehaved as exc:
                    self.stats.dropped_sources[source.name] = str(exc)
                    log.warning("source dropped: sent bad data", extra={
                        "source": source.name, "blob": self.entry.digest.short, "error": str(exc)})
                    return
                except (SwarmError, OSError, TimeoutError) as exc:
                    failures += 1
                    self.stats.source_failures += 1
                    log.info("source failed; its range goes to others", extra={
                        "source": source.name, "blob": self.entry.digest.short,
                        "error": f"{type(exc).__name__}: {exc}", "failures": failures})
                    if failures >= self.config.max_source_failures:
                        self.stats.dropped_sources[source.name] = f"{failures} failures: {exc}"
                        return
                    self._release(claim)
                    await asyncio.sleep(self.config.retry_delay)
                finally:
                    if claim in self.claims:
                        self._release(claim)
        finally:
            self.live -= 1
            self.signal.fire()

    async def _stream(self, source: Source, claim: _Claim) -> None:
        entry = self.entry
        start = claim.next * entry.chunk_size
        stop = min(claim.end * entry.chunk_size, entry.size)
        pieces = source.chunks(entry.digest, self.manifest, start, stop - start)
        try:
            expected = start
            # Pieces of the chunk being received (a server may cut a chunk into several).
            parts: list[bytes] = []
            held = 0
            while claim.next < claim.end:
                async with asyncio.timeout(self.config.stall_timeout):
                    item = await anext(pieces, None)
                if item is None:
                    raise UnavailableError(f"{source.name} ended the stream at byte {expected}")
                offset, data = item
                index = claim.next
                _, length = entry.chunk_span(index)
                if offset != expected or not data or held + len(data) > length:
                    raise _Misbehaved(f"piece at {offset}+{len(data)} does not continue "
                                      f"chunk {index} (expected byte {expected})")
                expected += len(data)
                held += len(data)
                if held < length:
                    parts.append(data)
                    continue
                if parts:
                    parts.append(data)
                    data = b"".join(parts)
                    parts.clear()
                held = 0
                if not await _digest_ok(data, entry.chunks[index]):
                    self.stats.chunks_rejected += 1
                    raise _Misbehaved(f"chunk {index} of blob {entry.digest.short} does not "
                                      "match the manifest")
                if index >= claim.end:  # another source took it over meanwhile
                    return
                claim.next = index + 1
                self.buffer[index] = data
                self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += length
                by_source = self.stats.bytes_by_source
                by_source[source.name] = by_source.get(source.name, 0) + length
                self.signal.fire()
        finally:
            await pieces.aclose()

    # -- the writer --------------------------------------------------------------------------

    async def _write(self) -> None:
        while self.written < self.count:
            wake = self.signal.waiter()
            data = self.buffer.pop(self.written, None)
            if data is None:
                if self.live == 0:
                    self.failure = UnavailableError(
                        f"no source could supply chunk {self.written} of blob "
                        f"{self.entry.digest.short}; verified chunks are kept for a resume")
                    self.signal.fire()
                    return
                await wake.wait()
                continue
            try:
                await asyncio.to_thread(self.writer.write_chunk, self.written, data, verified=True)
            except (IntegrityError, OSError) as exc:
                self.failure = exc
                self.signal.fire()
                return
            self.written += 1
            self.on_bytes(len(data))
            self.signal.fire()


async def _get_manifest(manifests: ManifestStore, digest: Digest, sources: Sequence[Source],
                        stats: FetchStats) -> tuple[Manifest, list[Source]]:
    """The verified manifest (stored here), and the sources still worth asking for chunks."""
    usable = [s for s in sources if s.name not in stats.dropped_sources]
    if await asyncio.to_thread(manifests.has, digest):
        return await asyncio.to_thread(manifests.get, digest), usable
    errors = []
    for source in usable:
        try:
            signed = await source.manifest(digest)
            manifest, actual = verify_manifest(signed)
            if actual != digest:
                raise IntegrityError(f"manifest is {actual}, not {digest}")
        except IntegrityError as exc:
            stats.manifests_rejected += 1
            stats.dropped_sources[source.name] = f"bad manifest: {exc}"
            log.warning("source sent a bad manifest", extra={
                "source": source.name, "digest": digest.short, "error": str(exc)})
            errors.append(f"{source.name}: {exc}")
            continue
        except (SwarmError, OSError) as exc:
            stats.source_failures += 1
            errors.append(f"{source.name}: {exc}")
            continue
        await asyncio.to_thread(manifests.put, signed, digest)
        return manifest, [s for s in sources if s.name not in stats.dropped_sources]
    raise UnavailableError(f"no source supplied manifest {digest}: " + ("; ".join(errors) or
                                                                        "no sources"))


async def fetch_version(manifests: ManifestStore, digest: Digest, sources: Sequence[Source], *,
                        config: FetchConfig = FetchConfig(), progress: Progress | None = None,
                        stats: FetchStats | None = None) -> FetchResult:
    """Fetch version `digest` from `sources` into `manifests` (and its BlobStore).

    Returns at once if the version is complete here. `progress(held, total)` is
    called as verified bytes are written. Pass `stats` to keep the counters even
    when the fetch fails. Raises UnavailableError when no source can supply the
    manifest or some chunk (verified chunks stay for a later resume) or another
    transfer is writing the same blob; InvalidInputError when the manifest's chunk
    list does not describe a blob stored here intact (the manifest is not kept).
    """
    stats = stats if stats is not None else FetchStats()
    had_manifest = await asyncio.to_thread(manifests.has, digest)
    manifest, usable = await _get_manifest(manifests, digest, sources, stats)
    total = manifest.total_size
    held = 0
    blobs = manifests.blobs

    def on_bytes(n: int) -> None:
        nonlocal held
        held += n
        if progress is not None:
            progress(held, total)

    for entry in manifest.files:
        try:
            writer = await asyncio.to_thread(blobs.begin, entry.digest, entry.size, entry.chunks,
                                             entry.chunk_size)
        except ConflictError as exc:  # a push or another fetch is writing it
            raise UnavailableError(f"blob {entry.digest.short} is being written by another "
                                   "transfer; try again later") from exc
        except InvalidInputError:
            # Its signed chunk list does not describe a blob this store holds intact: the
            # manifest is wrong, and is not kept to be served (it lists the blob as held).
            stats.manifests_rejected += 1
            if not had_manifest:
                await asyncio.to_thread(manifests.delete, digest)
            raise
        try:
            stats.bytes_resumed += writer.offset
            on_bytes(writer.offset)
            usable = [s for s in usable if s.name not in stats.dropped_sources]
            transfer = _FileTransfer(entry, digest, writer, config, stats, on_bytes)
            await transfer.run(usable)
        finally:
            writer.close()
    if not await asyncio.to_thread(manifests.complete, digest):
        raise UnavailableError(f"version {digest} is incomplete after its fetch (removed meanwhile?)")
    log.info("version fetched", extra={
        "digest": digest.short, "model": manifest.name, "bytes": stats.bytes_fetched,
        "resumed": stats.bytes_resumed, "sources": len(stats.bytes_by_source)})
    return FetchResult(digest, manifest, stats)
