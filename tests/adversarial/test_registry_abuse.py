"""Issue 11 items 2, 9 and 11: what a stranger can do to a node's registry.

- 11.2: a manifest signed by another key lists the victim's blob with a made-up layout;
  pushing it or reading with it must not quarantine (remove) the victim's data.
- 11.9: a push is bounded before anything is stored; a failed push leaves nothing listed;
  a stalled push cannot keep the owner out of its own blob; one key cannot bind unlimited
  namespaces and tags.
- 11.11: a manifest's batch size is a wish, not what warm-up allocates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import torch

from swarm._clock import FakeClock
from swarm._errors import InferenceError, IntegrityError, InvalidInputError
from swarm._proto.swarm.v1 import registry_pb2, registry_pb2_grpc
from swarm._types import Digest
from swarm.node import ModelOptions, Node, NodeConfig
from swarm.node._models import served_batch_size
from swarm.protocol import Gossip, Identity
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    BatchingDefaults,
    BlobStore,
    FileEntry,
    Manifest,
    ManifestStore,
    Outcome,
    RegistryAgent,
    RegistryClient,
    RegistryConfig,
    RegistryServicer,
    RolloutConfig,
    ServiceConfig,
    TagRecord,
    TagState,
    apply_tag,
    fetch_version,
    manifest_digest,
    sign_manifest,
    sign_tag,
)
from swarm.registry._client import CHANNEL_OPTIONS
from swarm.registry._publish import build_manifest, publish_tag, push
from swarm.registry._tags import TagLimits
from tests.registry.support import (
    CHUNK,
    INTRUDER,
    PUBLISHER,
    make_version,
    registry_node,
    store_version,
)
from tests.waiting import wait_until

Code = grpc.StatusCode


def _chunks(data: bytes, chunk: int = CHUNK) -> tuple[Digest, ...]:
    return tuple(Digest.of(data[o:o + chunk]) for o in range(0, len(data), chunk))


def _lie(victim: Manifest, blob: Digest, junk: bytes, *, name: str = "evil/x") -> Manifest:
    """A manifest by INTRUDER claiming that `blob` is `junk` (it lists junk's chunks)."""
    entry = FileEntry(path="model.pt2", digest=blob, size=len(junk), chunk_size=CHUNK,
                      chunks=_chunks(junk))
    return dataclasses.replace(victim, name=name, files=(entry,), publisher=INTRUDER.public_key)


def _messages(signed: bytes, data: bytes, piece: int = CHUNK) -> list[registry_pb2.PushChunk]:
    return [registry_pb2.PushChunk(manifest=signed)] + [
        registry_pb2.PushChunk(data=registry_pb2.PushData(file=0, offset=o, data=data[o:o + piece]))
        for o in range(0, len(data), piece)]


def _stub(channel: grpc.aio.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]


async def _raw_push(address: str, messages: Sequence[registry_pb2.PushChunk] | AsyncIterator[
        registry_pb2.PushChunk]) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        source = iter(messages) if isinstance(messages, Sequence) else messages
        try:
            await _stub(channel).PushModel(source, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return Code.OK, ""


async def _read(address: str, blob: Digest, manifest: Digest | None
                ) -> tuple[grpc.StatusCode, bytes]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        request = registry_pb2.ReadBlobRequest(digest=str(blob),
                                               manifest=str(manifest) if manifest else "")
        data = b""
        try:
            async for chunk in _stub(channel).ReadBlob(request, timeout=30):
                data += chunk.data
        except grpc.aio.AioRpcError as exc:
            return exc.code(), data
    return Code.OK, data


def _quarantined(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "quarantine").iterdir())


# -- 11.2: nothing a client sends removes another key's data ---------------------------------


async def test_a_strangers_manifest_cannot_get_a_publishers_blob_quarantined(
        tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK + 10)
    rng = random.Random(7)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        await push(client, v.path, v.manifest, PUBLISHER)
        record = TagRecord(PUBLISHER.public_key, "acme/classifier", "stable", v.digest, 1, 1.0)
        assert await client.publish_tag(sign_tag(record, PUBLISHER)) == "bound"
        # The lies: A's file blob with another size; with A's size and other chunks; and A's
        # manifest payload (a blob too) as a file. Each push sends bytes that match the lie's
        # own chunk list, so only the blob's own digest tells them apart.
        lies = [(v.blob, rng.randbytes(2 * len(v.data)), "evil/x"),
                (v.blob, rng.randbytes(len(v.data)), "evil/y"),
                (v.digest, rng.randbytes(3 * CHUNK), "evil/z")]
        for blob, junk, name in lies:
            lie = _lie(v.manifest, blob, junk, name=name)
            code, details = await _raw_push(node.plain,
                                            _messages(sign_manifest(lie, INTRUDER), junk))
            assert code is Code.INVALID_ARGUMENT, (name, code, details)
            # Nothing of the lie is kept, so nobody can read with it either.
            assert not node.manifests.has(manifest_digest(lie))
            code, _ = await _read(node.plain, blob, manifest_digest(lie))
            assert code is Code.NOT_FOUND, (name, code)
        # A's version is whole: it reads intact, is listed complete, nothing is quarantined.
        assert _quarantined(node.blobs.root) == []
        assert node.manifests.versions() == [v.digest]
        assert node.manifests.complete(v.digest)
        assert await _read(node.plain, v.blob, v.digest) == (Code.OK, v.data)


async def test_a_lying_layout_already_stored_reads_as_bad_input_not_as_lost_data(
        tmp_path: Path) -> None:
    # However a lying manifest got into the store (a peer that replicated it, an older
    # node), reading with its layout is the reader's bad request: the store re-hashes the
    # blob itself, finds it intact, and quarantines nothing.
    v = make_version(tmp_path / "src", size=4 * CHUNK + 10)
    rng = random.Random(8)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        await push(client, v.path, v.manifest, PUBLISHER)
        for blob, junk, name in [(v.blob, rng.randbytes(len(v.data)), "evil/y"),
                                 (v.digest, rng.randbytes(3 * CHUNK), "evil/z")]:
            lie = _lie(v.manifest, blob, junk, name=name)
            node.manifests.put(sign_manifest(lie, INTRUDER))
            code, _ = await _read(node.plain, blob, manifest_digest(lie))
            assert code is Code.INVALID_ARGUMENT, (name, code)
        assert _quarantined(node.blobs.root) == []
        assert node.manifests.complete(v.digest)
        assert await _read(node.plain, v.blob, v.digest) == (Code.OK, v.data)
        assert node.blobs.read(v.blob) == v.data




def test_the_store_concludes_corruption_only_from_the_blobs_own_digest(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK + 10)
    junk = random.Random(9).randbytes(len(v.data))
    store = BlobStore(tmp_path / "store")
    store.put(v.data)
    # Made-up layouts for a stored blob (what a lying manifest brings): refused, blob kept.
    for size, chunks in ((len(junk), _chunks(junk)), (2 * len(v.data), _chunks(2 * v.data))):
        with pytest.raises(InvalidInputError):
            store.begin(v.blob, size, chunks, CHUNK)
    with pytest.raises(InvalidInputError):
        store.read_chunk(v.blob, 0, CHUNK, Digest.of(b"not this chunk"))
    assert store.read(v.blob) == v.data
    assert _quarantined(store.root) == []
    # Real corruption is still found, by the blob's own digest, and quarantined.
    path = store.path(v.blob)
    path.chmod(0o644)
    path.write_bytes(b"x" + v.data[1:])
    with pytest.raises(IntegrityError):
        store.read_chunk(v.blob, 0, CHUNK, v.manifest.files[0].chunks[0])
    assert not store.has(v.blob)
    # And a writer of a corrupted stored blob quarantines it and writes it afresh.
    store.put(v.data)
    path.chmod(0o644)
    path.write_bytes(b"x" + v.data[1:])
    entry = v.manifest.files[0]
    with store.begin(v.blob, entry.size, entry.chunks, CHUNK) as writer:
        assert writer.next_index == 0
        for index in range(len(entry.chunks)):
            offset, length = entry.chunk_span(index)
            writer.write_chunk(index, v.data[offset:offset + length])
        writer.commit()
    assert store.read(v.blob) == v.data


async def test_a_fetched_manifest_that_lies_about_a_stored_blob_is_not_kept(
        tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK + 10)
    lie = _lie(v.manifest, v.blob, random.Random(10).randbytes(len(v.data)))
    async with registry_node(tmp_path / "peer", MemoryNetwork(0), 1) as peer, \
            RegistryClient(peer.plain) as source:
        peer.manifests.put(sign_manifest(lie, INTRUDER))  # a peer serving it (say, an old node)
        store = ManifestStore(BlobStore(tmp_path / "me"))
        store_version(store, v)
        with pytest.raises(InvalidInputError):
            await fetch_version(store, manifest_digest(lie), [source])
    assert not store.has(manifest_digest(lie))
    assert store.complete(v.digest)
    assert store.blobs.read(v.blob) == v.data
    assert _quarantined(store.blobs.root) == []


# -- 11.9: pushes and tags are bounded -------------------------------------------------------


def _declaring(base: Manifest, size: int) -> Manifest:
    """`base` re-cut to declare one file of `size` bytes (in 64 MiB chunks): a manifest
    that costs its sender a few hundred KB, whatever size it claims."""
    chunk = 64 << 20
    entry = FileEntry(path="model.pt2", digest=Digest.of(b"huge"), size=size, chunk_size=chunk,
                      chunks=tuple(Digest.of(i.to_bytes(4, "big")) for i in range(-(-size // chunk))))
    return dataclasses.replace(base, files=(entry,))


async def test_a_huge_push_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=4 * CHUNK)
    huge = _declaring(v.manifest, 1 << 40)  # 1 TiB
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        code, details = await _raw_push(node.plain, _messages(sign_manifest(huge, PUBLISHER), b""))
        assert code is Code.RESOURCE_EXHAUSTED, (code, details)
        assert "1099511627776" in details  # says how big, and the limit
        # A push that fails half-way leaves nothing listed either (its verified chunks stay
        # for a resume; the manifest is stored only once every file is).
        code, _ = await _raw_push(node.plain, _messages(v.signed, v.data)[:3])
        assert code is Code.INVALID_ARGUMENT
        assert node.manifests.versions() == []
        assert list((await client.list_models()).versions) == []
        # The whole push then resumes and lists the version, complete.
        assert (await push(client, v.path, v.manifest, PUBLISHER)).bytes_stored == 2 * CHUNK
        listed = (await client.list_models()).versions
        assert [(x.digest, x.complete) for x in listed] == [(str(v.digest), True)]


async def test_a_stalled_push_does_not_keep_the_owner_out(tmp_path: Path) -> None:
    # The stranger copies A's public file entry into a manifest of its own, sends part of a
    # chunk and stalls, holding the blob's writer; A's push of its version must not fail.
    v = make_version(tmp_path / "src", size=4 * CHUNK)
    stall = dataclasses.replace(v.manifest, name="evil/x", publisher=INTRUDER.public_key)
    release = asyncio.Event()
    clock = FakeClock()
    config = ServiceConfig(push_idle_timeout=30.0)
    servicers: list[RegistryServicer] = []

    def servicer(manifests: ManifestStore, agent: RegistryAgent) -> RegistryServicer:
        servicers.append(RegistryServicer(manifests, agent, config=config, clock=clock))
        return servicers[-1]

    async def stalled() -> AsyncIterator[registry_pb2.PushChunk]:
        yield registry_pb2.PushChunk(manifest=sign_manifest(stall, INTRUDER))
        yield registry_pb2.PushChunk(data=registry_pb2.PushData(file=0, offset=0,
                                                                data=v.data[:CHUNK // 2]))
        await release.wait()

    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1, servicer=servicer) as node, \
            asyncio.TaskGroup() as tg:
        stranger = tg.create_task(_raw_push(node.plain, stalled()))
        record = node.blobs.root / "partial" / f"{v.blob.hex}.json"
        await wait_until(lambda: record.exists() and clock.sleepers == 1,
                         what="the stranger's push to hold the blob, waiting for data")
        owner = tg.create_task(_raw_push(node.plain, _messages(v.signed, v.data)))
        turns = servicers[0]._turns
        await wait_until(lambda: turns.waiting(v.blob) == 2, what="the owner's push in line")
        assert not owner.done()  # waiting its turn, not refused
        clock.advance(config.push_idle_timeout)
        code, details = await owner
        release.set()
        assert code is Code.OK, (code, details)
        assert (await stranger)[0] is Code.DEADLINE_EXCEEDED
        assert node.manifests.complete(v.digest)
        assert node.manifests.versions() == [v.digest]  # the stranger's manifest is not


def test_tag_bounds_count_only_new_tags_and_spare_the_operators_namespaces() -> None:
    limits = TagLimits(namespaces_per_key=2, tags_per_namespace=2, tags=4)
    operator = Identity.from_seed(b"\x44" * 32)
    allowlist = {"op": frozenset({operator.public_key})}
    target = Digest.of(b"v")

    def apply(state: TagState, who: Identity, name: str, tag: str,
              seq: int = 1) -> tuple[TagState, Outcome]:
        record = TagRecord(who.public_key, name, tag, target, seq, 1.0)
        return apply_tag(state, record, allowlist=allowlist, limits=limits)

    state = TagState()
    for name, tag in (("a/m", "t1"), ("a/m", "t2"), ("b/m", "t1")):
        state, outcome = apply(state, INTRUDER, name, tag)
        assert outcome.ok
    assert apply(state, INTRUDER, "a/m", "t3") == (state, Outcome.LIMITED)  # 2 tags per namespace
    assert apply(state, INTRUDER, "c/m", "t1") == (state, Outcome.LIMITED)  # 2 namespaces per key
    state, outcome = apply(state, INTRUDER, "a/m", "t1", seq=2)
    assert outcome is Outcome.ACCEPTED  # a tag already held always moves
    state, outcome = apply(state, PUBLISHER, "d/m", "t1")
    assert outcome is Outcome.BOUND  # the fourth tag in all
    assert apply(state, PUBLISHER, "e/m", "t1") == (state, Outcome.LIMITED)  # 4 tags in all
    # The operator's allowlisted namespace is not kept out by what strangers filled.
    assert apply(state, operator, "op/m", "t1")[1] is Outcome.ACCEPTED


async def _tag_spam(client: RegistryClient, who: Identity, refs: Sequence[tuple[str, str]],
                    target: Digest) -> dict[str, int]:
    """Publish `name:tag -> target` for each ref, signed by `who`; counts the answers."""
    answers: dict[str, int] = {}
    for seq, (name, tag) in enumerate(refs, 1):
        record = TagRecord(who.public_key, name, tag, target, seq, 1.0)
        try:
            outcome = await client.publish_tag(sign_tag(record, who))
        except InferenceError as exc:
            outcome = exc.code
        answers[outcome] = answers.get(outcome, 0) + 1
    return answers


async def test_one_key_cannot_bind_unlimited_namespaces_or_tags(tmp_path: Path) -> None:
    target = Digest.of(b"any version")
    attempts = 500
    limits = RegistryConfig()
    other = Identity.from_seed(b"\x33" * 32)
    async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as node, \
            RegistryClient(node.plain) as client:
        async def listing_bytes() -> int:
            return len((await client.list_models()).SerializeToString())

        # One key, a namespace per tag.
        spread = await _tag_spam(client, INTRUDER,
                                 [(f"ns{i:03d}/m", "t") for i in range(attempts)], target)
        after_spread = await listing_bytes()
        # Another key, every tag in one namespace.
        deep = await _tag_spam(client, other, [("evil/m", f"t{i:03d}") for i in range(attempts)],
                               target)
        after_deep = await listing_bytes()
        print(f"ListModels after {attempts} tags over {attempts} namespaces: {after_spread} "
              f"bytes {spread}; after {attempts} more in one namespace: {after_deep} bytes {deep}")
        assert spread == {"bound": limits.max_namespaces_per_key,
                          "RESOURCE_EXHAUSTED": attempts - limits.max_namespaces_per_key}
        assert deep == {"bound": 1, "accepted": limits.max_tags_per_namespace - 1,
                        "RESOURCE_EXHAUSTED": attempts - limits.max_tags_per_namespace}
        assert after_deep < 40_000, after_deep
        assert node.agent.counters["tags_limited"] == 2 * attempts - (
            limits.max_namespaces_per_key + limits.max_tags_per_namespace)
        # The strangers' spam leaves other keys alone.
        record = TagRecord(PUBLISHER.public_key, "acme/classifier", "stable", target, 1, 1.0)
        assert await client.publish_tag(sign_tag(record, PUBLISHER)) == "bound"


# -- 11.11: warm-up allocates what the node allows, not what a manifest asks -----------------


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x * 2.0
        return out


def _export_unbounded(path: Path) -> Path:
    program = torch.export.export(_Scale().eval(), (torch.zeros(2, 4),), dynamic_shapes={
        "x": {0: torch.export.Dim("batch")}})  # no upper bound on the batch dimension
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())
    return path


async def test_warm_up_uses_the_nodes_batch_cap_not_the_manifests(tmp_path: Path) -> None:
    network = MemoryNetwork(0)

    async def gossip(identity: Identity, config: NodeConfig) -> Gossip:
        return network.join(identity.peer_id)

    config = NodeConfig.local(tmp_path / "n", device="cpu", p2p_port=0, advert_interval=0.3,
                              serve=("acme/classifier:stable",))
    node = Node(config, gossip_factory=gossip,
                registry_config=RegistryConfig.local(volunteer=False),
                rollout_config=RolloutConfig(linger=0.1, retry_initial=0.1, retry_max=0.5))
    path = _export_unbounded(tmp_path / "m.pt2")
    manifest = build_manifest(path, "acme/classifier", "v1", PUBLISHER, created_at=1.0)
    greedy = dataclasses.replace(manifest, batching=BatchingDefaults(max_batch_size=2**32 - 1))
    async with node, RegistryClient(node.grpc_address) as client:
        digest = (await push(client, path, greedy, PUBLISHER)).digest
        await publish_tag(client, PUBLISHER, "acme/classifier", "stable", digest, now=2.0)
        await wait_until(lambda: any(s.digest == digest for s in node.table), timeout=30,
                         what="the version served")
        served = node.table.resolve("acme/classifier")
        assert served.model.spec.max_batch_size == config.max_served_batch_size
        assert served.batcher.policy.max_batch_size == config.max_served_batch_size


def test_the_served_batch_size_is_the_nodes_to_give() -> None:
    assert served_batch_size(2**32 - 1, ModelOptions(), 256) == 256
    assert served_batch_size(8, ModelOptions(), 256) == 8  # a smaller wish is kept
    # The operator's own option for the model is the cap then, above or below the node's.
    assert served_batch_size(2**32 - 1, ModelOptions(max_batch_size=1024), 256) == 1024
    assert served_batch_size(64, ModelOptions(max_batch_size=4), 256) == 4
