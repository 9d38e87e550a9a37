"""fetch_version against real registry servers on loopback: parallel sources, drops, stalls,
tampered chunks, bad manifests, resume after a restart, work stealing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest

from swarm._errors import UnavailableError
from swarm._proto.swarm.v1 import registry_pb2
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    BlobStore,
    BlobWriter,
    FetchConfig,
    FetchStats,
    ManifestStore,
    RegistryAgent,
    RegistryClient,
    RegistryServicer,
    fetch_version,
    sign_manifest,
)
from tests.registry.support import (
    CHUNK,
    INTRUDER,
    RegistryNode,
    Version,
    make_version,
    registry_node,
    store_version,
)

SIZE = 24 * CHUNK + 999  # 25 chunks
FAST = FetchConfig(window_bytes=2 * CHUNK, max_buffer_bytes=8 * CHUNK, stall_timeout=2.0,
                   retry_delay=0.01)

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Tampering(RegistryServicer):
    """Flips a byte in every chunk it sends."""

    async def ReadBlob(self, request: registry_pb2.ReadBlobRequest,
                       context: Ctx) -> AsyncIterator[registry_pb2.BlobChunk]:
        async for piece in super().ReadBlob(request, context):
            data = bytearray(piece.data)
            data[len(data) // 2] ^= 0xFF
            yield registry_pb2.BlobChunk(offset=piece.offset, data=bytes(data))


class Hanging(RegistryServicer):
    """Sends `after` pieces, then sends nothing more (until the server is stopped)."""

    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after
        self.sent = 0
        self.reached = asyncio.Event()

    async def ReadBlob(self, request: registry_pb2.ReadBlobRequest,
                       context: Ctx) -> AsyncIterator[registry_pb2.BlobChunk]:
        async for piece in super().ReadBlob(request, context):
            if self.sent >= self.after:
                self.reached.set()
                await asyncio.Event().wait()
            self.sent += 1
            yield piece


class Slow(RegistryServicer):
    """A slow source: its slowness is what the work-stealing test is about."""

    async def ReadBlob(self, request: registry_pb2.ReadBlobRequest,
                       context: Ctx) -> AsyncIterator[registry_pb2.BlobChunk]:
        async for piece in super().ReadBlob(request, context):
            await asyncio.sleep(0.03)  # deliberate: 30 ms per piece, the honest one has none
            yield piece


class BadManifest(RegistryServicer):
    """Answers GetManifest with `signed` whatever is asked."""

    def __init__(self, *args: Any, signed: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signed = signed

    async def GetManifest(self, request: registry_pb2.GetManifestRequest,
                          context: Ctx) -> registry_pb2.SignedManifest:
        return registry_pb2.SignedManifest.FromString(self.signed)


@pytest.fixture
def version(tmp_path: Path) -> Version:
    return make_version(tmp_path / "src", size=SIZE)


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every chunk index handed to a BlobWriter, after checking that its bytes are good."""
    seen: list[int] = []
    original = BlobWriter.write_chunk

    def spy(self: BlobWriter, index: int, data: bytes, *, verified: bool = False) -> None:
        assert hashlib.sha256(data).hexdigest() == self.chunks[index].hex, "bad bytes reached the writer"
        seen.append(index)
        original(self, index, data, verified=verified)

    monkeypatch.setattr(BlobWriter, "write_chunk", spy)
    return seen


@asynccontextmanager
async def holders(tmp_path: Path, version: Version, *servicers: Any) -> AsyncIterator[list[RegistryNode]]:
    """One registry node per entry (None: honest), each storing `version`."""
    network = MemoryNetwork(0)
    async with AsyncExitStack() as stack:
        nodes = []
        for i, servicer in enumerate(servicers):
            node = await stack.enter_async_context(registry_node(
                tmp_path / f"holder{i}", network, 100 + i, servicer=servicer, run_agent=False))
            store_version(node.manifests, version)
            nodes.append(node)
        yield nodes


@asynccontextmanager
async def clients(nodes: list[RegistryNode]) -> AsyncIterator[list[RegistryClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(RegistryClient(n.plain)) for n in nodes]


def local(tmp_path: Path) -> ManifestStore:
    return ManifestStore(BlobStore(tmp_path / "local"))


def check_complete(store: ManifestStore, version: Version) -> None:
    assert store.complete(version.digest)
    assert store.blobs.read(version.blob) == version.data


async def test_fetch_from_two_sources_in_parallel(tmp_path: Path, version: Version,
                                                  written: list[int]) -> None:
    async with holders(tmp_path, version, None, None) as nodes, clients(nodes) as sources:
        progress: list[tuple[int, int]] = []
        store = local(tmp_path)
        result = await fetch_version(store, version.digest, sources, config=FAST,
                                     progress=lambda done, total: progress.append((done, total)))
    check_complete(store, version)
    stats = result.stats
    assert result.manifest == version.manifest
    assert set(stats.bytes_by_source) == {n.plain for n in nodes}
    assert all(b > 0 for b in stats.bytes_by_source.values())
    assert sum(stats.bytes_by_source.values()) == stats.bytes_fetched == SIZE
    assert (stats.chunks_fetched, stats.chunks_rejected, stats.source_failures) == (25, 0, 0)
    assert written == list(range(25))  # the reorder buffer hands the writer chunks in order
    assert [p for p, _ in progress] == sorted(p for p, _ in progress)
    assert progress[-1] == (SIZE, SIZE)
    # Already complete: nothing to fetch, no source needed.
    again = await fetch_version(store, version.digest, [])
    assert again.stats.bytes_fetched == 0


async def test_source_killed_midway_the_other_finishes(tmp_path: Path, version: Version,
                                                       written: list[int]) -> None:
    dying: list[Hanging] = []

    def make_dying(manifests: ManifestStore, agent: RegistryAgent) -> RegistryServicer:
        dying.append(Hanging(manifests, agent, after=5))
        return dying[0]

    async with holders(tmp_path, version, make_dying, None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        async with asyncio.TaskGroup() as tg:
            fetch = tg.create_task(fetch_version(store, version.digest, sources, config=FAST))
            await dying[0].reached.wait()
            await nodes[0].server.stop(None)  # the connection drops mid-stream
        result = fetch.result()
    check_complete(store, version)
    stats = result.stats
    assert stats.source_failures >= 1
    assert nodes[0].plain in stats.dropped_sources
    assert stats.bytes_by_source[nodes[1].plain] > stats.bytes_by_source.get(nodes[0].plain, 0)
    assert stats.bytes_fetched == SIZE
    assert written == list(range(25))


async def test_stalled_source_times_out_and_the_other_finishes(tmp_path: Path,
                                                               version: Version) -> None:
    def stalling(manifests: ManifestStore, agent: RegistryAgent) -> RegistryServicer:
        return Hanging(manifests, agent, after=2)

    config = FetchConfig(window_bytes=4 * CHUNK, max_buffer_bytes=8 * CHUNK, stall_timeout=0.3,
                         retry_delay=0.01, max_source_failures=1)
    async with holders(tmp_path, version, stalling, None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        result = await fetch_version(store, version.digest, sources, config=config)
    check_complete(store, version)
    assert result.stats.source_failures == 1
    assert nodes[0].plain in result.stats.dropped_sources


async def test_tampered_chunks_are_rejected_and_fetched_elsewhere(tmp_path: Path, version: Version,
                                                                  written: list[int]) -> None:
    async with holders(tmp_path, version, Tampering, None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        stats = FetchStats()
        result = await fetch_version(store, version.digest, sources, config=FAST, stats=stats)
    check_complete(store, version)
    assert result.stats is stats
    assert stats.chunks_rejected == 1  # its first bad chunk; it is not asked again
    assert "does not match" in stats.dropped_sources[nodes[0].plain]
    assert nodes[0].plain not in stats.bytes_by_source
    assert stats.bytes_by_source[nodes[1].plain] == SIZE
    assert written == list(range(25))


async def test_only_a_tampering_source_fails_and_nothing_bad_is_written(
        tmp_path: Path, version: Version, written: list[int]) -> None:
    async with holders(tmp_path, version, Tampering) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        stats = FetchStats()
        with pytest.raises(UnavailableError):
            await fetch_version(store, version.digest, sources, config=FAST, stats=stats)
    assert stats.chunks_rejected == 1
    assert written == []
    assert not store.blobs.has(version.blob)


async def test_bad_manifests_are_rejected_and_counted(tmp_path: Path, version: Version) -> None:
    signed = registry_pb2.SignedManifest.FromString(version.signed)
    forged = registry_pb2.SignedManifest(payload=signed.payload,
                                         signature=bytes(64)).SerializeToString()
    other = make_version(tmp_path / "src", seed=9).signed  # valid, but another digest
    intruder = sign_manifest(make_version(tmp_path / "src", seed=9, publisher=INTRUDER).manifest,
                             INTRUDER)

    def answering(data: bytes) -> Any:
        return lambda m, a: BadManifest(m, a, signed=data)

    async with holders(tmp_path, version, answering(forged), answering(other), answering(intruder),
                       None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        result = await fetch_version(store, version.digest, sources, config=FAST)
    check_complete(store, version)
    assert result.stats.manifests_rejected == 3
    assert set(result.stats.dropped_sources) == {n.plain for n in nodes[:3]}
    assert set(result.stats.bytes_by_source) == {nodes[3].plain}


async def test_resume_after_restart_from_another_source(tmp_path: Path, version: Version) -> None:
    dying: list[Hanging] = []

    def make_dying(manifests: ManifestStore, agent: RegistryAgent) -> RegistryServicer:
        dying.append(Hanging(manifests, agent, after=7))
        return dying[0]

    config = FetchConfig(window_bytes=4 * CHUNK, max_buffer_bytes=8 * CHUNK, stall_timeout=2.0,
                         retry_delay=0.01)
    async with holders(tmp_path, version, make_dying) as nodes, clients(nodes) as sources:
        first = FetchStats()

        async def kill() -> None:
            await dying[0].reached.wait()
            await nodes[0].server.stop(None)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(kill())
            with pytest.raises(UnavailableError):
                await fetch_version(local(tmp_path), version.digest, sources, config=config,
                                    stats=first)
    assert first.bytes_fetched == 7 * CHUNK
    # A new process: fresh store objects over the same directory, another source.
    async with holders(tmp_path / "b", version, None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        result = await fetch_version(store, version.digest, sources, config=config)
    check_complete(store, version)
    assert result.stats.bytes_resumed == 7 * CHUNK
    assert result.stats.bytes_fetched == SIZE - 7 * CHUNK


async def test_a_fast_source_steals_work_from_a_slow_one(tmp_path: Path, version: Version,
                                                        written: list[int]) -> None:
    config = FetchConfig(window_bytes=8 * CHUNK, max_buffer_bytes=32 * CHUNK, retry_delay=0.01)
    async with holders(tmp_path, version, Slow, None) as nodes, clients(nodes) as sources:
        store = local(tmp_path)
        result = await fetch_version(store, version.digest, sources, config=config)
    check_complete(store, version)
    stats = result.stats
    assert stats.steals >= 1
    assert stats.bytes_by_source[nodes[1].plain] > stats.bytes_by_source[nodes[0].plain]
    assert written == list(range(25))
