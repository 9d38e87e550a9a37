"""RegistryServicer: swarm.v1.RegistryService over a ManifestStore and the node's tag book.

Statuses, so that callers can tell their own mistakes from ours (a SwarmError caught
here is sent as swarm.routing.status_of says, the table the clients read it back with):

    NOT_FOUND            no such manifest or blob here
    INVALID_ARGUMENT     malformed request, misaligned range, bad manifest or tag signature,
                         push messages out of order
    DATA_LOSS            bytes that do not match their digest: a stored blob corrupted on
                         disk (it is quarantined), or pushed bytes that do not match the manifest
    PERMISSION_DENIED    a push or tag by a key that does not own the namespace
    FAILED_PRECONDITION  a tag record older than the one this node holds
    RESOURCE_EXHAUSTED   a push larger than `ServiceConfig.max_push_bytes` or than the free disk;
                         a tag past the bounds on namespaces per key or tags
    DEADLINE_EXCEEDED    a push that delivered no verified chunk for `push_idle_timeout` seconds
    ABORTED              the same blob is being fetched by this node; retry later

Whose data is it: a manifest is signed by any key, so nothing it claims about a blob can
remove the blob. Corruption is concluded only from the store's own check (the blob's
digest re-hashed from disk); a chunk list that does not describe an intact blob is the
manifest's error (INVALID_ARGUMENT), and a push whose manifest lies about a blob stored
here is refused without touching the blob. A pushed version is stored (and listed) only
once all its files are: a failed push leaves verified chunks for a resume, never a
manifest. Pushes of the same blob take turns (the second waits; a stalled first loses its
turn after `push_idle_timeout`), so a stranger's stream cannot lock an owner out.

Disk work runs in threads; the next chunk of a ReadBlob stream is read while the
current one is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm._errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    ModelNotFoundError,
)
from swarm._proto.swarm.v1 import registry_pb2, registry_pb2_grpc
from swarm._types import Digest
from swarm.registry._manifest import FileEntry, Manifest, verify_manifest
from swarm.registry._manifests import ManifestStore
from swarm.registry._store import BlobWriter
from swarm.registry._tags import Outcome, TagRecord, TagState, previous
from swarm.routing import status_of

__all__ = ["RegistryServicer", "ServiceConfig", "TagBook", "add_registry_service"]

log = logging.getLogger("swarm.registry")

SERVICE_NAME = "swarm.v1.RegistryService"


class TagBook(Protocol):
    """What the service needs from the node's tag keeper (RegistryAgent implements it)."""

    @property
    def state(self) -> TagState: ...

    @property
    def allowlist(self) -> Mapping[str, Set[bytes]]: ...

    def signed_record(self, name: str, tag: str) -> bytes | None:
        """The SignedTag bytes of the current record of `name:tag`, if known."""
        ...

    async def publish(self, signed: bytes, *,
                      check: Callable[[TagRecord], Awaitable[None]] | None = None) -> Outcome:
        """Verify (IntegrityError if bad), `check`, apply here and, if accepted, gossip a SignedTag."""
        ...


# A 70B-parameter model in 16-bit weights is ~140 GB: a node that takes such pushes says so.
DEFAULT_MAX_PUSH_BYTES = 32 << 30


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    # Largest version (all its files) a push may upload, in bytes; 0: no limit. Checked
    # against the signed manifest before anything is stored.
    max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES
    # Longest piece of a chunk in one ReadBlob message; larger chunks go out in pieces.
    # grpcio moved 200 MB on loopback in ~1 s as 4 MiB messages, ~0.25 s as 1 MiB ones.
    max_piece_bytes: int = 1 << 20
    # Seconds a push may go without delivering its next verified chunk before it is
    # aborted (DEADLINE_EXCEEDED) and its turn at the blob passes on; 0: no limit.
    # At the default 4 MiB chunks this asks a pusher for ~140 KB/s.
    push_idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_push_bytes < 0 or self.max_piece_bytes < 1 or not self.push_idle_timeout >= 0:
            raise ValueError("max_push_bytes and push_idle_timeout must be >= 0 "
                             "and max_piece_bytes >= 1")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode,
                 message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def _parse_digest(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except InvalidReferenceError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Turns:
    """One writer per blob at a time; the others wait in line (not refused)."""

    def __init__(self) -> None:
        self._locks: dict[Digest, tuple[asyncio.Lock, int]] = {}

    def waiting(self, digest: Digest) -> int:
        """Pushes holding or waiting for the blob's turn."""
        return self._locks.get(digest, (None, 0))[1]

    @contextlib.asynccontextmanager
    async def hold(self, digest: Digest) -> AsyncIterator[None]:
        lock, users = self._locks.get(digest, (asyncio.Lock(), 0))
        self._locks[digest] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[digest]
            if users == 1:
                del self._locks[digest]  # nobody holds or waits: forget the blob
            else:
                self._locks[digest] = (lock, users - 1)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves stored versions to peers and accepts pushes and tags from publishers.

    `on_stored` is called after a push stores a complete version (the node
    re-advertises what it holds).
    """

    def __init__(self, manifests: ManifestStore, tags: TagBook, *,
                 config: ServiceConfig = ServiceConfig(),
                 on_stored: Callable[[Digest], None] = lambda digest: None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._manifests = manifests
        self._blobs = manifests.blobs
        self._tags = tags
        self._config = config
        self._on_stored = on_stored
        # Times the push idle timeout (a FakeClock in tests).
        self._clock = clock
        self._turns = _Turns()

    # -- reads -------------------------------------------------------------------------------

    async def GetManifest(self, request: registry_pb2.GetManifestRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> registry_pb2.SignedManifest:
        digest = _parse_digest(request.digest)
        if digest is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"not a digest: {request.digest!r}")
        try:
            signed = await asyncio.to_thread(self._manifests.signed, digest)
        except ModelNotFoundError as exc:
            await _abort(context, status_of(exc), str(exc))
        except IntegrityError as exc:
            log.error("stored manifest is corrupted", extra={"digest": str(digest)})
            await _abort(context, status_of(exc), str(exc))
        return registry_pb2.SignedManifest.FromString(signed)

    async def ReadBlob(self, request: registry_pb2.ReadBlobRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[registry_pb2.BlobChunk]:
        blob = _parse_digest(request.digest)
        if blob is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"not a digest: {request.digest!r}")
        manifest: Digest | None = None
        if request.manifest:
            manifest = _parse_digest(request.manifest)
            if manifest is None:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"not a digest: {request.manifest!r}")
        try:
            entry = await asyncio.to_thread(self._manifests.layout, blob, manifest)
        except ModelNotFoundError as exc:
            await _abort(context, status_of(exc), str(exc))
        held = await asyncio.to_thread(self._held_size, blob)
        if held is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"blob {blob} is not stored here")
        if held != entry.size:  # the manifest's claim, not a fact about our disk
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"blob {blob.short} held here is {held} bytes; the manifest says "
                         f"{entry.size}")
        first, last = await self._range(entry, request, context)
        loop = asyncio.get_running_loop()

        def read(index: int) -> bytes:
            offset, length = entry.chunk_span(index)
            return self._blobs.read_chunk(blob, offset, length, entry.chunks[index])

        piece = self._config.max_piece_bytes
        pending: asyncio.Future[bytes] | None = None
        try:
            for index in range(first, last):
                current = pending if pending is not None else loop.run_in_executor(None, read, index)
                # Read ahead: the next chunk comes off the disk while this one is sent.
                pending = loop.run_in_executor(None, read, index + 1) if index + 1 < last else None
                try:
                    data = await current
                except ModelNotFoundError as exc:  # deleted or quarantined meanwhile
                    await _abort(context, status_of(exc), str(exc))
                except IntegrityError as exc:
                    log.error("stored blob is corrupted; quarantined", extra={"blob": str(blob)})
                    await _abort(context, status_of(exc), str(exc))
                except InvalidInputError as exc:  # the manifest's chunk list, not our disk
                    log.warning("a manifest's chunk list does not describe its blob", extra={
                        "blob": str(blob), "manifest": str(manifest), "peer": context.peer()})
                    await _abort(context, status_of(exc), str(exc))
                offset = index * entry.chunk_size
                for start in range(0, len(data), piece):
                    yield registry_pb2.BlobChunk(offset=offset + start, data=data[start:start + piece])
        finally:
            if pending is not None:
                pending.cancel()

    async def _range(self, entry: FileEntry, request: registry_pb2.ReadBlobRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> tuple[int, int]:
        """Chunk indexes [first, last) of the requested byte range."""
        size, chunk = entry.size, entry.chunk_size
        end = size if request.length == 0 else request.offset + request.length
        if request.offset % chunk or request.offset > size or end > size or (
                end % chunk and end != size):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"range {request.offset}+{request.length} is not chunk-aligned within "
                         f"{size} bytes in chunks of {chunk}")
        return request.offset // chunk, -(-end // chunk)

    async def ListModels(self, request: registry_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> registry_pb2.ListModelsResponse:
        state = self._tags.state
        response = registry_pb2.ListModelsResponse()
        for (name, tag), entry in sorted(state.tags.items()):
            if request.name and name != request.name:
                continue
            record = entry.record
            back = previous(state, name, tag)
            info = registry_pb2.TagInfo(
                name=name, tag=tag, target=str(record.target), sequence=record.sequence,
                previous=str(back) if back is not None else "", publisher=record.publisher,
                timestamp_unix_ms=round(record.timestamp * 1000))
            signed = self._tags.signed_record(name, tag)
            if signed is not None:
                info.signed.ParseFromString(signed)
            response.tags.append(info)
        for digest, manifest, complete in await asyncio.to_thread(self._versions):
            if request.name and manifest.name != request.name:
                continue
            response.versions.append(registry_pb2.VersionInfo(
                digest=str(digest), name=manifest.name, version=manifest.version,
                size=manifest.total_size, complete=complete,
                created_at_unix_ms=round(manifest.created_at * 1000)))
        return response

    def _versions(self) -> list[tuple[Digest, Manifest, bool]]:
        out = []
        for digest in self._manifests.versions():
            try:
                manifest = self._manifests.get(digest)
            except (ModelNotFoundError, IntegrityError):
                continue
            out.append((digest, manifest, all(self._blobs.has(f.digest) for f in manifest.files)))
        return out

    # -- writes ------------------------------------------------------------------------------

    async def PushModel(self, request_iterator: AsyncIterator[registry_pb2.PushChunk],
                        context: grpc.aio.ServicerContext[Any, Any]) -> registry_pb2.PushModelResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("part") != "manifest":
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "a push starts with the signed manifest")
        try:
            manifest, digest = verify_manifest(first.manifest)
        except IntegrityError as exc:  # the sender's bad input, not our lost data
            log.warning("push refused: bad manifest", extra={"peer": context.peer(), "error": str(exc)})
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        owners = self._tags.state.owner(manifest.ref.namespace, self._tags.allowlist)
        if owners and manifest.publisher not in owners:
            log.warning("push refused: key does not own the namespace",
                        extra={"model": manifest.name, "peer": context.peer()})
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"the manifest's key does not own namespace {manifest.ref.namespace!r}")
        limit = self._config.max_push_bytes
        if limit and manifest.total_size > limit:
            log.warning("push refused: too large", extra={
                "model": manifest.name, "bytes": manifest.total_size, "peer": context.peer()})
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"version of {manifest.total_size} bytes exceeds this node's limit of "
                         f"{limit} bytes")
        missing, free = await asyncio.to_thread(self._space_for, manifest)
        if missing > free:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"version needs {missing} more bytes; this node has {free} free")
        stored = 0
        for index, entry in enumerate(manifest.files):
            stored += await self._receive_file(index, entry, messages, context)
        extra = await anext(messages, None)
        if extra is not None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "push carries more bytes than its manifest lists")
        # Only now: a version is listed once all of it is here, never by a failed push.
        await asyncio.to_thread(self._manifests.put, first.manifest, digest)
        log.info("version pushed", extra={"model": manifest.name, "version": manifest.version,
                                          "digest": digest.short, "bytes": stored})
        self._on_stored(digest)
        return registry_pb2.PushModelResponse(digest=str(digest), bytes_stored=stored)

    def _space_for(self, manifest: Manifest) -> tuple[int, int]:
        """(bytes of the version not stored here yet, bytes free on the store's disk)."""
        missing = sum(f.size for f in manifest.files if not self._blobs.has(f.digest))
        return missing, shutil.disk_usage(self._blobs.root).free

    async def _receive_file(self, index: int, entry: FileEntry,
                            messages: AsyncIterator[registry_pb2.PushChunk],
                            context: grpc.aio.ServicerContext[Any, Any]) -> int:
        """Take file `index` from the push stream; returns the bytes newly stored."""
        held = await asyncio.to_thread(self._held_size, entry.digest)
        if held is not None:
            await self._check_stored(index, entry, held, messages, context)
            return 0
        # One writer per blob: a second push of it waits its turn instead of failing, and a
        # stalled one loses its turn after the idle timeout (see _chunks).
        async with self._turns.hold(entry.digest):
            try:
                writer: BlobWriter = await asyncio.to_thread(
                    self._blobs.begin, entry.digest, entry.size, entry.chunks, entry.chunk_size)
            except ConflictError as exc:  # this node is fetching the blob from peers
                await _abort(context, status_of(exc), str(exc))
            except InvalidInputError as exc:  # stored meanwhile, and the manifest lies about it
                await _abort(context, status_of(exc), str(exc))
            try:
                stored = 0
                async with contextlib.aclosing(self._chunks(index, entry, messages, context)) as chunks:
                    async for chunk_index, chunk in chunks:
                        if chunk_index < writer.next_index:
                            continue  # held already (a resumed partial, or stored meanwhile)
                        await asyncio.to_thread(writer.write_chunk, chunk_index, chunk, verified=True)
                        stored += len(chunk)
                try:
                    await asyncio.to_thread(writer.commit)
                except IntegrityError as exc:  # every chunk matched: the chunk list is wrong
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{entry.path}: {exc}")
                return stored
            finally:
                writer.close()

    def _held_size(self, digest: Digest) -> int | None:
        try:
            return self._blobs.size(digest)
        except ModelNotFoundError:
            return None

    async def _check_stored(self, index: int, entry: FileEntry, held: int,
                            messages: AsyncIterator[registry_pb2.PushChunk],
                            context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Read a file the store holds from the stream and check it, writing nothing.

        The manifest's entry must describe the stored blob, or a manifest listing someone
        else's blob with a made-up chunk list would be stored as complete. The pushed
        bytes prove it (each chunk, then the whole digest): checking costs what the pusher
        sends, where re-hashing the stored blob would cost the node its size per manifest.
        """
        if held != entry.size:
            log.warning("push refused: its manifest misstates a stored blob", extra={
                "blob": str(entry.digest), "peer": context.peer()})
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"{entry.path}: blob {entry.digest.short} held here is {held} bytes, "
                         f"not {entry.size}")
        whole = hashlib.sha256()
        async with contextlib.aclosing(self._chunks(index, entry, messages, context)) as chunks:
            async for _, chunk in chunks:
                await asyncio.to_thread(whole.update, chunk)
        if whole.hexdigest() != entry.digest.hex:
            log.warning("push refused: its manifest misstates a stored blob", extra={
                "blob": str(entry.digest), "peer": context.peer()})
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"{entry.path}: chunks add up to sha256:{whole.hexdigest()}, "
                         f"not {entry.digest}")

    async def _chunks(self, index: int, entry: FileEntry,
                      messages: AsyncIterator[registry_pb2.PushChunk],
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> AsyncGenerator[tuple[int, bytes], None]:
        """(index, bytes) of each chunk of file `index`, re-cut from the push stream and
        checked against the manifest's chunk digest (DATA_LOSS if it does not match).

        Each chunk must arrive within `push_idle_timeout` of the previous one: progress is
        counted in verified chunks, so trickling bytes that never make one keeps nothing.
        """
        idle = self._config.push_idle_timeout
        received = 0
        buffer = bytearray()
        for chunk_index in range(len(entry.chunks)):
            _, length = entry.chunk_span(chunk_index)
            deadline = self._clock.monotonic() + idle
            while len(buffer) < length:
                msg = await self._next(messages, deadline if idle else None, entry, context)
                if msg is None:
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"push ended inside {entry.path} at byte {received} of {entry.size}")
                data = msg.data
                if msg.WhichOneof("part") != "data" or data.file != index or data.offset != received:
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"expected bytes of file {index} at offset {received}")
                if received + len(data.data) > entry.size:
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{entry.path} is longer than its manifest's {entry.size} bytes")
                received += len(data.data)
                buffer += data.data
            chunk = bytes(buffer[:length])
            del buffer[:length]
            if await asyncio.to_thread(_sha256, chunk) != entry.chunks[chunk_index].hex:
                log.warning("push refused: bytes do not match the manifest",
                            extra={"blob": str(entry.digest), "chunk": chunk_index,
                                   "peer": context.peer()})
                await _abort(context, grpc.StatusCode.DATA_LOSS,
                             f"chunk {chunk_index} of {entry.path} does not match "
                             f"{entry.chunks[chunk_index]}")
            yield chunk_index, chunk

    async def _next(self, messages: AsyncIterator[registry_pb2.PushChunk], deadline: float | None,
                    entry: FileEntry, context: grpc.aio.ServicerContext[Any, Any]
                    ) -> registry_pb2.PushChunk | None:
        """The next push message, or None at the end; aborts the push past `deadline`."""
        if deadline is None:
            return await anext(messages, None)

        async def read() -> registry_pb2.PushChunk | None:
            return await anext(messages, None)

        step = asyncio.ensure_future(read())
        if not await wait_within(self._clock, step, max(0.0, deadline - self._clock.monotonic())):
            log.warning("push aborted: stalled", extra={
                "blob": str(entry.digest), "idle_s": self._config.push_idle_timeout,
                "peer": context.peer()})
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"no verified chunk of {entry.path} for "
                         f"{self._config.push_idle_timeout:g} s; push aborted")
        return step.result()

    async def PublishTag(self, request: registry_pb2.SignedTag,
                         context: grpc.aio.ServicerContext[Any, Any]) -> registry_pb2.PublishTagResponse:
        signed = request.SerializeToString()
        verified: list[TagRecord] = []

        async def same_name(record: TagRecord) -> None:
            verified.append(record)
            if await asyncio.to_thread(self._manifests.has, record.target):
                manifest = await asyncio.to_thread(self._manifests.get, record.target)
                if manifest.name != record.name:
                    raise InvalidInputError(f"{record.target.short} is a version of "
                                            f"{manifest.name}, not {record.name}")

        try:
            outcome = await self._tags.publish(signed, check=same_name)
        except IntegrityError as exc:  # the sender's bad input, not our lost data
            log.warning("tag refused: bad record", extra={"peer": context.peer(), "error": str(exc)})
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except InvalidInputError as exc:
            await _abort(context, status_of(exc), str(exc))
        record = verified[0]
        if outcome is Outcome.UNAUTHORIZED:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"the record's key does not own namespace {record.namespace!r}")
        if outcome is Outcome.LIMITED:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{record.name}:{record.tag} would pass this node's bounds on tags "
                         "(namespaces per key, tags per namespace, or tags in all)")
        if outcome is Outcome.STALE:
            current = self._tags.state.get(record.name, record.tag)
            have = current.sequence if current is not None else 0
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"{record.name}:{record.tag} is at sequence {have}; "
                         f"record {record.sequence} is not newer")
        return registry_pb2.PublishTagResponse(outcome=outcome.value)


def add_registry_service(servicer: RegistryServicer, server: grpc.aio.Server) -> None:
    """Register the servicer on a grpc.aio server."""
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
