"""RegistryService over a real grpc.aio server on loopback, and the ManifestStore beneath it."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from swarm._errors import InferenceError, IntegrityError, InvalidInputError, ModelNotFoundError
from swarm._proto.swarm.v1 import registry_pb2, registry_pb2_grpc
from swarm._types import Digest
from swarm.protocol import Identity
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    BlobStore,
    ManifestStore,
    RegistryClient,
    ServiceConfig,
    TagRecord,
    sign_tag,
    verify_manifest,
)
from swarm.registry._client import CHANNEL_OPTIONS
from swarm.registry._publish import push
from tests.registry.support import CHUNK, INTRUDER, PUBLISHER, make_version, registry_node


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


# -- ManifestStore --------------------------------------------------------------------------


def test_manifest_store_roundtrip_completeness_and_gc(tmp_path: Path) -> None:
    v1 = make_version(tmp_path / "src", seed=1)
    v2 = make_version(tmp_path / "src", seed=2, version="v2")
    store = ManifestStore(BlobStore(tmp_path / "store"))
    manifest, digest = store.put(v1.signed)
    assert (manifest, digest) == (v1.manifest, v1.digest)
    assert store.has(digest)
    assert not store.complete(digest)
    assert store.signed(digest) == v1.signed  # the payload blob + signature sidecar re-assemble
    store.blobs.put(v1.data)
    assert store.complete(digest)
    assert store.layout(v1.blob) == v1.manifest.files[0]
    store.put(v2.signed)
    store.blobs.put(v2.data)
    assert store.versions() == sorted([v1.digest, v2.digest], key=lambda d: d.hex)
    # A fresh instance (no cache) re-verifies what is on disk.
    again = ManifestStore(BlobStore(tmp_path / "store"))
    assert again.get(v2.digest) == v2.manifest
    removed = again.gc({v1.digest})
    assert set(removed) == {v2.digest, v2.blob}
    assert again.complete_versions() == [v1.digest]


def test_manifest_store_refuses_forgeries(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src")
    store = ManifestStore(BlobStore(tmp_path / "store"))
    signed = registry_pb2.SignedManifest.FromString(v.signed)
    forged = registry_pb2.SignedManifest(payload=signed.payload,
                                         signature=flip(signed.signature, 3)).SerializeToString()
    with pytest.raises(IntegrityError):
        store.put(forged)
    with pytest.raises(IntegrityError):
        store.put(v.signed, expected=Digest.of(b"something else"))
    assert store.versions() == []
    with pytest.raises(ModelNotFoundError):
        store.get(v.digest)
    # A signature swapped on disk is caught when a fresh process reads it.
    store.put(v.signed)
    sidecar = tmp_path / "store" / "manifests" / f"{v.digest.hex}.sig"
    sidecar.write_bytes(flip(sidecar.read_bytes(), 0))
    with pytest.raises(IntegrityError):
        ManifestStore(BlobStore(tmp_path / "store")).get(v.digest)


# -- the service ----------------------------------------------------------------------------


async def test_push_get_manifest_and_read_ranges(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=10 * CHUNK + 100)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        seen: list[tuple[int, int]] = []
        result = await push(client, v.path, v.manifest, PUBLISHER,
                            progress=lambda done, total: seen.append((done, total)))
        assert result.digest == v.digest
        assert result.bytes_stored == len(v.data)
        assert seen[-1] == (len(v.data), len(v.data))
        assert node.stored == [v.digest]
        assert node.manifests.complete(v.digest)
        assert node.blobs.read(v.blob) == v.data

        manifest, digest = verify_manifest(await client.manifest(v.digest))
        assert (manifest, digest) == (v.manifest, v.digest)

        async def read(offset: int, length: int) -> list[tuple[int, bytes]]:
            return [p async for p in client.chunks(v.blob, v.digest, offset, length)]

        whole = await read(0, 0)
        assert b"".join(d for _, d in whole) == v.data
        assert [o for o, _ in whole] == [i * CHUNK for i in range(11)]
        middle = await read(3 * CHUNK, 2 * CHUNK)
        assert middle == [(3 * CHUNK, v.data[3 * CHUNK:4 * CHUNK]),
                          (4 * CHUNK, v.data[4 * CHUNK:5 * CHUNK])]
        tail = await read(10 * CHUNK, 100)  # the short last chunk
        assert tail == [(10 * CHUNK, v.data[10 * CHUNK:])]
        # No manifest named: the layout comes from any manifest held.
        assert [o async for o, _ in client.chunks(v.blob, None, CHUNK, CHUNK)] == [CHUNK]

        with pytest.raises(InvalidInputError):
            await read(100, CHUNK)  # not chunk-aligned
        with pytest.raises(InvalidInputError):
            await read(0, 11 * CHUNK)  # past the end
        with pytest.raises(ModelNotFoundError):
            await client.manifest(Digest.of(b"unknown"))
        with pytest.raises(ModelNotFoundError):
            _ = [p async for p in client.chunks(
                Digest.of(b"no such blob"), None, 0, 0)]

        # Pushing the same version again stores nothing new.
        again = await push(client, v.path, v.manifest, PUBLISHER)
        assert again.bytes_stored == 0


async def test_large_chunks_are_sent_in_pieces(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=3 * CHUNK)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1,
                             service_config=ServiceConfig(max_piece_bytes=CHUNK // 4)) as node, \
            RegistryClient(node.plain) as client:
        await push(client, v.path, v.manifest, PUBLISHER)
        pieces = [p async for p in client.chunks(v.blob, v.digest, CHUNK, CHUNK)]
        assert [o for o, _ in pieces] == [CHUNK + i * CHUNK // 4 for i in range(4)]
        assert b"".join(d for _, d in pieces) == v.data[CHUNK:2 * CHUNK]


async def test_corrupted_blob_is_data_loss_and_quarantined(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        await push(client, v.path, v.manifest, PUBLISHER)
        path = node.blobs.path(v.blob)
        os.chmod(path, 0o644)
        path.write_bytes(flip(path.read_bytes(), 2 * CHUNK + 5))
        with pytest.raises(IntegrityError):
            _ = [p async for p in client.chunks(v.blob, v.digest, 0, 0)]
        assert not node.blobs.has(v.blob)
        assert not node.manifests.complete(v.digest)


async def _raw_push(address: str, messages: list[registry_pb2.PushChunk]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.PushModel(iter(messages))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _messages(signed: bytes, data: bytes, piece: int = CHUNK) -> list[registry_pb2.PushChunk]:
    return [registry_pb2.PushChunk(manifest=signed)] + [
        registry_pb2.PushChunk(data=registry_pb2.PushData(file=0, offset=o, data=data[o:o + piece]))
        for o in range(0, len(data), piece)]


async def test_push_refuses_bad_input_precisely(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK + 7)
    other_key = make_version(tmp_path / "src", seed=5, publisher=INTRUDER)
    signed = registry_pb2.SignedManifest.FromString(v.signed)
    forged = registry_pb2.SignedManifest(payload=signed.payload,
                                         signature=flip(signed.signature, 9)).SerializeToString()
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1,
                             service_config=ServiceConfig(max_push_bytes=1 << 30)) as node:
        addr = node.plain
        assert await _raw_push(addr, _messages(forged, v.data)) == grpc.StatusCode.INVALID_ARGUMENT
        assert await _raw_push(addr, _messages(v.signed, flip(v.data, 3 * CHUNK + 1))) == \
            grpc.StatusCode.DATA_LOSS
        # Bytes before the bad chunk were verified and kept for a resume; nothing was published.
        assert not node.blobs.has(v.blob)
        assert await _raw_push(addr, _messages(v.signed, v.data)[1:]) == \
            grpc.StatusCode.INVALID_ARGUMENT  # no manifest first
        assert await _raw_push(addr, _messages(v.signed, v.data)[:-1]) == \
            grpc.StatusCode.INVALID_ARGUMENT  # ended early
        assert await _raw_push(addr, _messages(v.signed, v.data + b"x")) == \
            grpc.StatusCode.INVALID_ARGUMENT  # longer than the manifest says
        # Odd piece sizes are fine: the node re-cuts them into the manifest's chunks.
        assert await _raw_push(addr, _messages(v.signed, v.data, piece=CHUNK // 3 + 1)) == \
            grpc.StatusCode.OK
        assert node.blobs.read(v.blob) == v.data

        # Once PUBLISHER owns "acme" (its first tag), another key cannot push there.
        record = TagRecord(PUBLISHER.public_key, "acme/classifier", "v1", v.digest, 1, 1.0)
        async with RegistryClient(addr) as client:
            assert await client.publish_tag(sign_tag(record, PUBLISHER)) == "bound"
        assert await _raw_push(addr, _messages(other_key.signed, other_key.data)) == \
            grpc.StatusCode.PERMISSION_DENIED
    async with registry_node(tmp_path / "small", MemoryNetwork(0), 1,
                             service_config=ServiceConfig(max_push_bytes=CHUNK)) as node:
        assert await _raw_push(node.plain, _messages(v.signed, v.data)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_list_models_and_publish_tag_statuses(tmp_path: Path) -> None:
    v1 = make_version(tmp_path / "src", seed=1)
    v2 = make_version(tmp_path / "src", seed=2, version="v2")
    elsewhere = make_version(tmp_path / "src", seed=3, name="acme/other")
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        for v in (v1, v2, elsewhere):
            await push(client, v.path, v.manifest, PUBLISHER)

        def tag(seq: int, target: Digest, who: Identity = PUBLISHER) -> bytes:
            record = TagRecord(who.public_key, "acme/classifier", "stable", target, seq, 1.0 + seq)
            return sign_tag(record, who)

        assert await client.publish_tag(tag(1, v1.digest)) == "bound"
        assert await client.publish_tag(tag(2, v2.digest)) == "accepted"
        assert await client.publish_tag(tag(2, v2.digest)) == "duplicate"
        with pytest.raises(InferenceError) as stale:
            await client.publish_tag(tag(1, v1.digest))
        assert stale.value.code == "FAILED_PRECONDITION"
        with pytest.raises(InferenceError) as denied:
            await client.publish_tag(tag(3, v1.digest, INTRUDER))
        assert denied.value.code == "PERMISSION_DENIED"
        with pytest.raises(InvalidInputError):  # a version of acme/other under acme/classifier
            await client.publish_tag(tag(3, elsewhere.digest))
        signed = registry_pb2.SignedTag.FromString(tag(4, v1.digest))
        signed.signature = flip(signed.signature, 0)
        with pytest.raises(InvalidInputError):
            await client.publish_tag(signed.SerializeToString())
        assert node.agent.counters["tags_unauthorized"] == 1
        assert node.agent.counters["tags_rejected"] == 1

        listing = await client.list_models("acme/classifier")
        assert [(t.tag, t.target, t.sequence, t.previous) for t in listing.tags] == [
            ("stable", str(v2.digest), 2, str(v1.digest))]
        assert listing.tags[0].signed.payload  # peers can sync the record itself
        assert {(x.digest, x.version, x.complete) for x in listing.versions} == {
            (str(v1.digest), "v1", True), (str(v2.digest), "v2", True)}
        assert len((await client.list_models()).versions) == 3
