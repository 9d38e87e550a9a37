"""Shared helpers for registry tests: versions on disk, registry nodes on loopback, peer views."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from swarm._types import Digest, PeerId, TensorSpec
from swarm.protocol import Advert, Gossip, Identity, PeerView, admit, make_certificate
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    BlobStore,
    Manifest,
    ManifestStore,
    ModelFormat,
    RegistryAgent,
    RegistryConfig,
    RegistryServicer,
    ServiceConfig,
    add_registry_service,
    manifest_for_file,
    sign_manifest,
)
from swarm.registry._client import CHANNEL_OPTIONS

PUBLISHER = Identity.from_seed(b"\x11" * 32)
INTRUDER = Identity.from_seed(b"\x22" * 32)
CHUNK = 64 << 10
INPUTS = (TensorSpec("input", "FP32", (-1, 4)),)
OUTPUTS = (TensorSpec("output", "FP32", (-1, 3)),)


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass(frozen=True)
class Version:
    path: Path
    data: bytes
    manifest: Manifest
    signed: bytes
    digest: Digest

    @property
    def blob(self) -> Digest:
        return self.manifest.files[0].digest


def make_version(root: Path, size: int = (1 << 20) + 1234, *, seed: int = 0,
                 name: str = "acme/classifier", version: str = "v1",
                 publisher: Identity = PUBLISHER, chunk_size: int = CHUNK) -> Version:
    """A single-file version of `size` random bytes, written under `root`, signed."""
    root.mkdir(parents=True, exist_ok=True)
    data = random_bytes(size, seed)
    path = root / f"model-{seed}.pt2"
    path.write_bytes(data)
    manifest = manifest_for_file(path, name, version, format=ModelFormat.TORCH_EXPORT,
                                 inputs=INPUTS, outputs=OUTPUTS, publisher=publisher.public_key,
                                 created_at=1_790_000_000.0, chunk_size=chunk_size)
    signed = sign_manifest(manifest, publisher)
    return Version(path, data, manifest, signed, Digest.of(_payload(signed)))


def _payload(signed: bytes) -> bytes:
    from swarm._proto.swarm.v1 import registry_pb2

    return registry_pb2.SignedManifest.FromString(signed).payload


def store_version(manifests: ManifestStore, v: Version) -> None:
    manifests.put(v.signed, v.digest)
    manifests.blobs.put(v.data, v.blob)


def identity(seed: int) -> Identity:
    return Identity.from_seed(hashlib.sha256(b"peer%d" % seed).digest())


def peer_id(seed: int) -> PeerId:
    return identity(seed).peer_id


def view_of(entries: Sequence[tuple[PeerId, str, Sequence[Digest]]], *,
            draining: Sequence[PeerId] = ()) -> PeerView:
    """A PeerView of peers (id, gRPC address, versions stored)."""
    view = PeerView()
    now = time.time()
    for pid, address, stored in entries:
        advert = Advert(peer_id=pid, endpoints=(address,) if address else (), models=(),
                        sequence=1, timestamp=now, ttl=60.0, stored=tuple(stored),
                        draining=pid in draining)
        view, verdict = admit(view, advert, time.monotonic(), now)
        assert verdict.ok
    return view


class StaticView:
    """A settable peer view for agents (stands in for Membership.view)."""

    def __init__(self, view: PeerView | None = None) -> None:
        self.view = view or PeerView()

    def __call__(self) -> PeerView:
        return self.view


@dataclass
class RegistryNode:
    """A registry service on loopback: store, agent (in-memory gossip), gRPC server."""

    # TLS, proving peer_id(seed): what views advertise and agents dial.
    address: str
    manifests: ManifestStore
    agent: RegistryAgent
    server: grpc.aio.Server
    view: StaticView
    stored: list[Digest]
    # Plaintext, for tests' direct RegistryClient (a node's loopback port).
    plain: str = ""

    @property
    def blobs(self) -> BlobStore:
        return self.manifests.blobs


ServicerFactory = Callable[[ManifestStore, RegistryAgent], RegistryServicer]


@asynccontextmanager
async def registry_node(root: Path, network: MemoryNetwork, seed: int, *,
                        servicer: ServicerFactory | None = None,
                        config: RegistryConfig | None = None,
                        service_config: ServiceConfig | None = None,
                        run_agent: bool = True) -> AsyncIterator[RegistryNode]:
    manifests = ManifestStore(BlobStore(root))
    gossip: Gossip = network.join(peer_id(seed))
    view = StaticView()
    stored: list[Digest] = []
    agent = RegistryAgent(gossip, manifests, view=view,
                          config=config or RegistryConfig.local(volunteer=False),
                          rng=random.Random(seed), on_stored=stored.append)
    if servicer is None:
        svc = RegistryServicer(manifests, agent, config=service_config or ServiceConfig(),
                               on_stored=stored.append)
    else:
        svc = servicer(manifests, agent)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    add_registry_service(svc, server)
    # As a node: peers reach the registry service over TLS proving peer_id(seed).
    cert, key = make_certificate(identity(seed))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    plain = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    node = RegistryNode(f"127.0.0.1:{port}", manifests, agent, server, view, stored,
                        plain=f"127.0.0.1:{plain}")
    try:
        async with asyncio.TaskGroup() as tg:
            if run_agent:
                await agent.load()  # as the node does: saved tags are in before anything runs
                tg.create_task(agent.run())
            try:
                yield node
            finally:
                agent.stop()
    finally:
        await server.stop(None)
        await gossip.close()
