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
    RESOURCE_EXHAUSTED   a push larger than `ServiceConfig.max_push_bytes`
    ABORTED              the same blob is being written by another transfer; retry later

Disk work runs in threads; the next chunk of a ReadBlob stream is read while the
current one is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc

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


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    # Largest version (all its files) a push may upload, in bytes; 0: no limit.
    max_push_bytes: int = 0
    # Longest piece of a chunk in one ReadBlob message; larger chunks go out in pieces.
    # grpcio moved 200 MB on loopback in ~1 s as 4 MiB messages, ~0.25 s as 1 MiB ones.
    max_piece_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_push_bytes < 0 or self.max_piece_bytes < 1:
            raise ValueError("max_push_bytes must be >= 0 and max_piece_bytes >= 1")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode,
                 message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def _parse_digest(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except InvalidReferenceError:
        return None


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves stored versions to peers and accepts pushes and tags from publishers.

    `on_stored` is called after a push stores a complete version (the node
    re-advertises what it holds).
    """

    def __init__(self, manifests: ManifestStore, tags: TagBook, *,
                 config: ServiceConfig = ServiceConfig(),
                 on_stored: Callable[[Digest], None] = lambda digest: None) -> None:
        self._manifests = manifests
        self._blobs = manifests.blobs
        self._tags = tags
        self._config = config
        self._on_stored = on_stored

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
        if not self._blobs.has(blob):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"blob {blob} is not stored here")
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
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"version of {manifest.total_size} bytes exceeds this node's limit of {limit}")
        await asyncio.to_thread(self._manifests.put, first.manifest, digest)
        stored = 0
        for index, entry in enumerate(manifest.files):
            stored += await self._receive_file(index, entry, messages, context)
        extra = await anext(messages, None)
        if extra is not None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "push carries more bytes than its manifest lists")
        log.info("version pushed", extra={"model": manifest.name, "version": manifest.version,
                                          "digest": digest.short, "bytes": stored})
        self._on_stored(digest)
        return registry_pb2.PushModelResponse(digest=str(digest), bytes_stored=stored)

    async def _receive_file(self, index: int, entry: FileEntry,
                            messages: AsyncIterator[registry_pb2.PushChunk],
                            context: grpc.aio.ServicerContext[Any, Any]) -> int:
        """Write file `index` from the push stream; returns the bytes newly stored."""
        try:
            writer: BlobWriter = await asyncio.to_thread(
                self._blobs.begin, entry.digest, entry.size, entry.chunks, entry.chunk_size)
        except ConflictError as exc:  # a fetch or another push is writing this blob
            await _abort(context, status_of(exc), str(exc))
        try:
            received = 0
            skip = writer.offset  # held already (a resumed partial, or the whole blob)
            buffer = bytearray()
            stored = 0
            while received < entry.size:
                msg = await anext(messages, None)
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
                piece = data.data
                if received < skip:
                    piece = piece[skip - received:]
                received += len(data.data)
                buffer += piece
                while not writer.complete:
                    chunk_index = writer.next_index
                    _, length = entry.chunk_span(chunk_index)
                    if len(buffer) < length:
                        break
                    chunk = bytes(buffer[:length])
                    del buffer[:length]
                    try:
                        await asyncio.to_thread(writer.write_chunk, chunk_index, chunk)
                    except IntegrityError as exc:
                        log.warning("push refused: bytes do not match the manifest",
                                    extra={"blob": str(entry.digest), "chunk": chunk_index,
                                           "peer": context.peer()})
                        await _abort(context, status_of(exc), str(exc))
                    stored += length
            try:
                await asyncio.to_thread(writer.commit)
            except IntegrityError as exc:
                await _abort(context, status_of(exc), str(exc))
            return stored
        finally:
            writer.close()

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
