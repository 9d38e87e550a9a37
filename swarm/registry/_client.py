"""RegistryClient: the gRPC client of swarm.v1.RegistryService (peers and the CLI use it).

gRPC failures are translated at this edge by the one status table that the SDK and
the node use too (swarm.routing.error_from_rpc): NOT_FOUND -> ModelNotFoundError,
DATA_LOSS -> DataLossError (an IntegrityError), PERMISSION_DENIED -> PermissionDeniedError,
FAILED_PRECONDITION/ABORTED -> ConflictError, RESOURCE_EXHAUSTED -> OverloadedError,
UNAVAILABLE (connection refused or reset, ...) -> UnavailableError, and so on.
A client is also a fetch `Source` (swarm.registry._fetch).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from types import TracebackType

import grpc

from swarm._proto.swarm.v1 import registry_pb2, registry_pb2_grpc
from swarm._types import Digest, PeerId
from swarm.protocol import PeerChannels
from swarm.registry._manifest import MAX_CHUNK_SIZE
from swarm.routing import error_from_rpc

__all__ = ["CHANNEL_OPTIONS", "RegistryClient"]

# A blob chunk (up to MAX_CHUNK_SIZE) plus framing must fit in one message.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_CHUNK_SIZE + (1 << 20)),
    ("grpc.max_send_message_length", MAX_CHUNK_SIZE + (1 << 20)),
]


class RegistryClient:
    """One connection to a node's RegistryService. `async with RegistryClient(addr) as c:`."""

    def __init__(self, address: str, *, timeout: float = 30.0, peer: PeerId | None = None,
                 channels: PeerChannels | None = None) -> None:
        """With `peer`, the connection is TLS pinned to the certificate `peer` proves it
        holds (through `channels`, which the caller owns, or a private set); without,
        plaintext (a local node's loopback port)."""
        self.address = address
        self.timeout = timeout
        self._peer = peer
        self._own_channels = channels is None and peer is not None
        self._channels = channels if channels is not None or peer is None else PeerChannels(
            options=CHANNEL_OPTIONS)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: registry_pb2_grpc.RegistryServiceStub | None = None
        if peer is None:
            self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._stub_ = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def _connect(self) -> registry_pb2_grpc.RegistryServiceStub:
        if self._stub_ is None:
            assert self._channels is not None
            assert self._peer is not None
            channel = await self._channels.channel(self._peer, self.address)
            self._stub_ = registry_pb2_grpc.RegistryServiceStub(channel)
        return self._stub_

    @property
    def name(self) -> str:
        return self.address

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._own_channels and self._channels is not None:
            await self._channels.close()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- Source ------------------------------------------------------------------------------

    async def manifest(self, digest: Digest) -> bytes:
        """SignedManifest bytes of `digest` as the node has them (the caller verifies)."""
        try:
            signed = await (await self._connect()).GetManifest(
                registry_pb2.GetManifestRequest(digest=str(digest)), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address}: manifest {digest.short}") from exc
        data: bytes = signed.SerializeToString()
        return data

    async def chunks(self, blob: Digest, manifest: Digest | None, offset: int,
                     length: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """(offset, bytes) pieces of `blob` from `offset`, `length` bytes (0: to the end).

        Unverified: the caller checks them against the manifest. Closing the
        iterator early cancels the stream.
        """
        call = (await self._connect()).ReadBlob(registry_pb2.ReadBlobRequest(
            digest=str(blob), offset=offset, length=length,
            manifest=str(manifest) if manifest is not None else ""))
        try:
            async for piece in call:
                yield piece.offset, piece.data
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address}: blob {blob.short}") from exc
        finally:
            call.cancel()

    # -- the rest of the service -------------------------------------------------------------

    async def list_models(self, name: str = "") -> registry_pb2.ListModelsResponse:
        try:
            response: registry_pb2.ListModelsResponse = await (await self._connect()).ListModels(
                registry_pb2.ListModelsRequest(name=name), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address}: list models") from exc
        return response

    async def push(self, messages: Iterable[registry_pb2.PushChunk] | AsyncIterator[
            registry_pb2.PushChunk], *, timeout: float | None = None) -> registry_pb2.PushModelResponse:
        """Upload a version (see RegistryService.PushModel); no deadline unless `timeout`."""
        try:
            response: registry_pb2.PushModelResponse = await (await self._connect()).PushModel(
                messages, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address}: push") from exc
        return response

    async def publish_tag(self, signed: bytes) -> str:
        """Send SignedTag bytes; returns the node's outcome ("accepted", "bound", "duplicate")."""
        try:
            response: registry_pb2.PublishTagResponse = await (await self._connect()).PublishTag(
                registry_pb2.SignedTag.FromString(signed), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"{self.address}: publish tag") from exc
        return response.outcome
