"""Issue 17 item 3: signed tag records (with their history) survive a node restart.

They are stored beside the registry's blobs, written atomically, and re-verified when
the node starts: a record whose signature fails is dropped and logged, never trusted
because it was on disk. What is newer comes from peers (the agent's tag sync).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from swarm._errors import ModelNotFoundError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest
from swarm.node import Node, NodeConfig
from swarm.protocol import Gossip, Identity
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    RegistryClient,
    RegistryConfig,
    RolloutConfig,
    TagRecord,
    sign_tag,
)
from swarm.registry._publish import build_manifest, publish_tag, push, rollback_target
from tests.registry.programs import export
from tests.registry.support import PUBLISHER
from tests.waiting import wait_until

NAME = "acme/classifier"




def node_factory(tmp_path: Path, network: MemoryNetwork) -> Callable[..., Node]:
    async def gossip(identity: Identity, config: NodeConfig) -> Gossip:
        return network.join(identity.peer_id)

    def node(name: str, serve: tuple[str, ...] = ()) -> Node:
        config = NodeConfig.local(tmp_path / name, device="cpu", p2p_port=0,
                                  advert_interval=0.3, serve=serve)
        return Node(config, gossip_factory=gossip,
                    registry_config=RegistryConfig.local(volunteer=False),
                    rollout_config=RolloutConfig(linger=0.1, retry_initial=0.1, retry_max=0.5))

    return node


def resolves(node: Node, ref: str) -> Digest | None:
    try:
        return None if node.registry is None else node.registry.resolve(ref)
    except ModelNotFoundError:
        return None


def serving(node: Node) -> Digest | None:
    versions = node.table.versions(NAME)
    return node.table.resolve(NAME).digest if versions else None


async def publish_versions(node: Node, tmp_path: Path) -> tuple[Digest, Digest, Digest]:
    """Push v1, v2 and v3 and move `stable` v1 -> v2; returns their digests."""
    digests = []
    async with RegistryClient(node.grpc_address) as client:
        for i in (1, 2, 3):
            path = export(tmp_path / f"v{i}.pt2", float(i))
            manifest = build_manifest(path, NAME, f"v{i}", PUBLISHER, created_at=float(i))
            digests.append((await push(client, path, manifest, PUBLISHER)).digest)
        await publish_tag(client, PUBLISHER, NAME, "stable", digests[0], now=10.0)
        await publish_tag(client, PUBLISHER, NAME, "stable", digests[1], now=11.0)
    return digests[0], digests[1], digests[2]


async def test_tags_history_and_serving_survive_a_restart(tmp_path: Path) -> None:
    node = node_factory(tmp_path, MemoryNetwork(0))
    async with node("a") as a:
        d1, d2, _ = await publish_versions(a, tmp_path)
    # Restarted alone (no peer to sync from): everything it knows comes from its own disk.
    async with node("a", serve=(f"{NAME}:stable",)) as a, \
            RegistryClient(a.grpc_address) as client:
        await wait_until(lambda: serving(a) == d2, timeout=20, what="v2 served after restart")
        listing = await client.list_models(NAME)
        assert [(t.tag, t.target, t.previous) for t in listing.tags] == [
            ("stable", str(d2), str(d1))]
        assert listing.tags[0].signed.payload  # peers can still sync the record from here
        # Rollback works: history came back with the records.
        back = rollback_target(listing, NAME, "stable")
        assert back == d1
        await publish_tag(client, PUBLISHER, NAME, "stable", back, now=12.0, listing=listing)
        await wait_until(lambda: serving(a) == d1, timeout=20, what="v1 served after rollback")
        assert a.registry is not None
        assert a.registry.counters["tags_loaded"] == 2
        assert 'swarm_registry_events_total{event="tags_loaded"} 2.0' in a.metrics.render().decode()
    # And the rollback itself is remembered.
    async with node("a", serve=(f"{NAME}:stable",)) as a:
        await wait_until(lambda: serving(a) == d1, timeout=20, what="v1 served after 2nd restart")


def _tag_files(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "registry" / "tags").glob("*.json"))
    assert files, "no tag records on disk"
    return files


async def test_a_tampered_tag_file_is_refused(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    network = MemoryNetwork(0)
    node = node_factory(tmp_path, network)
    async with node("a") as a:
        d1, d2, d3 = await publish_versions(a, tmp_path)
    # Someone with the disk rewrites the current record to point `stable` at v3 (keeping
    # its signature) and appends a record they made up under another key.
    (path,) = _tag_files(tmp_path / "a")
    stored = json.loads(path.read_text())
    records = [registry_pb2.SignedTag.FromString(bytes.fromhex(r)) for r in stored["records"]]
    current = registry_pb2.TagRecord.FromString(records[-1].payload)
    assert current.target == str(d2)
    current.target = str(d3)
    records[-1].payload = current.SerializeToString()
    stored["records"] = [r.SerializeToString().hex() for r in records]
    path.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="swarm.registry"):
        async with node("a", serve=(f"{NAME}:stable",)) as a:
            assert a.registry is not None
            # The forged record is dropped; the tag stands where the records that verify put it.
            assert a.registry.resolve(f"{NAME}:stable") == d1
            assert a.registry.counters["tags_load_dropped"] == 1
            await wait_until(lambda: serving(a) == d1, timeout=20, what="v1 served")
    assert any("does not verify" in r.getMessage() for r in caplog.records), caplog.text
    # A file that is not even readable is set aside (for a look), and the node starts.
    path.write_text("{not json")
    async with node("a") as a:
        assert a.registry is not None
        assert a.registry.state.get(NAME, "stable") is None
    assert list(path.parent.glob("*.corrupt"))


async def test_a_restarted_node_syncs_what_is_newer_from_a_peer(tmp_path: Path) -> None:
    network = MemoryNetwork(0)
    node = node_factory(tmp_path, network)
    async with node("b") as b:
        async with node("a") as a:
            d1, d2, _ = await publish_versions(a, tmp_path)
            assert b.registry is not None
            await wait_until(lambda: resolves(b, f"{NAME}:stable") == d2, what="B has v2")
        # While A is down the tag moves back to v1 (through B, which holds no versions).
        async with RegistryClient(b.grpc_address) as client:
            (info,) = (await client.list_models(NAME)).tags
            record = TagRecord(PUBLISHER.public_key, NAME, "stable", d1, info.sequence + 1, 12.0)
            assert await client.publish_tag(sign_tag(record, PUBLISHER)) == "accepted"
        async with node("a") as a:
            # From its disk first, then the newer record from B.
            await wait_until(lambda: resolves(a, f"{NAME}:stable") == d1, timeout=20,
                             what="A synced the newer record from B")
