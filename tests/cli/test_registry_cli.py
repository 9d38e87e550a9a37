"""`swarm model push|ls|tag|rollback|pull` against a real in-process registry node over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import io
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from swarm._types import Digest
from swarm.cli._registry import add_parser, run
from swarm.cli._registry_commands import COMMANDS, default_store
from swarm.protocol import Advert, Gossip, Identity, LightPeer, Membership, MembershipConfig
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    BlobStore,
    ManifestStore,
    ModelFormat,
    TagRecord,
    next_sequence,
    publisher_key_path,
    sign_tag,
)
from tests.registry.support import (
    PUBLISHER,
    make_version,
    registry_node,
    store_version,
)
from tests.registry.support import identity as node_identity


class Small(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


def export(path: Path, seed: int) -> Path:
    program = torch.export.export(Small(seed).eval(), (torch.zeros(2, 4),), dynamic_shapes={
        "x": {0: torch.export.Dim("batch", min=1, max=32)}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("programs")
    return export(root / "v1.pt2", 1), export(root / "v2.pt2", 2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    """A registry node serving on loopback from a thread of its own (the CLI runs its own loop)."""
    address: list[str] = []
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    loop: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        async with registry_node(tmp_path / "node", MemoryNetwork(0), 1) as n:
            stop.append(asyncio.Event())
            loop.append(asyncio.get_running_loop())
            address.append(n.plain)
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="registry-node")
    thread.start()
    assert ready.wait(20)
    yield address[0]
    loop[0].call_soon_threadsafe(stop[0].set)
    thread.join(20)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="swarm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["model", *argv]))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="swarm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["model", *argv])


def listing(capsys: pytest.CaptureFixture[str], address: str) -> dict[str, object]:
    capsys.readouterr()
    assert cli("ls", "--node", address, "--json") == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def tags_of(data: dict[str, object]) -> dict[str, tuple[str, str | None]]:
    tags = data["tags"]
    assert isinstance(tags, list)
    return {t["tag"]: (t["target"], t["previous"]) for t in tags}


def test_push_tag_rollback_pull_through_a_node(node: str, programs: tuple[Path, Path],
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    v1, v2 = programs
    assert cli("push", str(v1), "--name", "acme/classifier", "--tag", "v1", "--node", node) == 0
    out = capsys.readouterr().out
    assert "tagged acme/classifier:v1" in out
    key = tmp_path / "config" / "swarm" / "publisher.key"
    assert publisher_key_path() == key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # created on first use
    assert cli("push", str(v2), "--name", "acme/classifier", "--tag", "v2", "--node", node) == 0

    tags = tags_of(listing(capsys, node))
    d1, d2 = tags["v1"][0], tags["v2"][0]
    assert d1 != d2
    assert cli("tag", "acme/classifier:stable", "acme/classifier:v1", "--node", node) == 0
    assert cli("tag", "acme/classifier:stable", d2, "--node", node) == 0  # a digest target
    data = listing(capsys, node)
    assert tags_of(data)["stable"] == (d2, d1)
    versions = data["versions"]
    assert isinstance(versions, list)
    assert {(v["version"], v["complete"]) for v in versions} == {("v1", True), ("v2", True)}

    assert cli("rollback", "acme/classifier:stable", "--node", node) == 0
    assert "rolled acme/classifier:stable back to " + d1 in capsys.readouterr().out
    assert tags_of(listing(capsys, node))["stable"] == (d1, d2)

    store, out_dir = tmp_path / "pulled", tmp_path / "out"
    assert cli("pull", "acme/classifier:stable", "--node", node, "--store", str(store),
               "--output", str(out_dir)) == 0
    assert (out_dir / "v1.pt2").read_bytes() == v1.read_bytes()
    manifest = ManifestStore(BlobStore(store)).get(Digest.parse(d1))
    assert manifest.format is ModelFormat.TORCH_EXPORT
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("output", (-1, 3))]
    assert manifest.batching.max_batch_size == 32  # the Dim's upper bound
    assert manifest.version == "v1"
    assert cli("pull", d2, "--node", node, "--no-store") == 0  # verify only, by digest
    out = capsys.readouterr().out
    assert "pulled acme/classifier v2" in out
    assert "nothing kept" in out


def test_pull_keeps_what_it_fetched_in_the_nodes_default_store(
        node: str, programs: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As `docker pull` keeps the image: where a node with the default data dir finds it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SWARM_DATA_DIR", str(tmp_path / "data"))
    assert default_store() == tmp_path / "data" / "registry"
    monkeypatch.delenv("SWARM_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store() == tmp_path / "home" / ".local" / "share" / "swarm-node" / "registry"
    v1, _ = programs
    assert cli("push", str(v1), "--name", "acme/classifier", "--tag", "v1", "--node", node) == 0
    digest = Digest.parse(tags_of(listing(capsys, node))["v1"][0])
    assert cli("pull", "acme/classifier:v1", "--node", node) == 0
    assert f"stored in {default_store()}" in capsys.readouterr().out
    assert ManifestStore(BlobStore(default_store())).get(digest).version == "v1"
    assert cli("pull", "acme/classifier:v1", "--node", node, "--no-store",
               "--store", str(tmp_path / "x")) == 1
    assert "not both" in capsys.readouterr().err


def test_ls_in_a_pipe_shows_whole_digests_and_names_the_node(
        node: str, programs: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    v1, _ = programs
    assert cli("push", str(v1), "--name", "acme/a-rather-long-model-name", "--tag",
               "a-long-tag-name-that-a-narrow-table-would-cut", "--node", node) == 0
    data = listing(capsys, node)
    assert data["node"] == node  # which node answered (with --bootstrap: any of the swarm)
    target = tags_of(data)["a-long-tag-name-that-a-narrow-table-would-cut"][0]
    assert cli("ls", "--node", node) == 0
    out = capsys.readouterr().out  # captured: not a terminal
    assert "acme/a-rather-long-model-name:a-long-tag-name-that-a-narrow-table-would-cut" in out
    assert target in out  # the whole digest, not 19 characters of it
    assert f"tags known to {node}" in out
    assert f"versions on {node}" in out


def test_cli_errors_are_clear(node: str, programs: tuple[Path, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    v1, _ = programs
    assert cli("push", str(v1), "--name", "acme/classifier", "--tag", "v1", "--node", node) == 0
    capsys.readouterr()
    Identity.load_or_create(tmp_path / "other.key")
    assert cli("tag", "acme/classifier:stable", "acme/classifier:v1", "--node", node,
               "--key", str(tmp_path / "other.key")) == 1
    assert "does not own namespace 'acme'" in capsys.readouterr().err
    assert cli("rollback", "acme/classifier:v1", "--node", node) == 1
    assert "no earlier version" in capsys.readouterr().err
    assert cli("tag", "acme/classifier:stable", "acme/classifier:nope", "--node", node) == 1
    assert "no tag acme/classifier:nope" in capsys.readouterr().err
    not_a_program = tmp_path / "junk.pt2"
    not_a_program.write_bytes(b"not a zip")
    assert cli("push", str(not_a_program), "--name", "acme/classifier", "--node", node) == 1
    assert "not a torch.export archive" in capsys.readouterr().err
    assert cli("ls", "--node", "127.0.0.1:1", "--timeout", "2") == 1  # nobody listens there


def test_sequences_and_targets_are_pure_decisions() -> None:
    assert next_sequence(None, 1_000) == 1_000
    assert next_sequence(5_000, 1_000) == 5_001  # a clock behind what was seen
    assert next_sequence(999, 1_000) == 1_000


async def test_bootstrap_joins_as_a_light_peer_and_pulls_from_holders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SWARM_DATA_DIR", str(tmp_path / "data"))  # where the pull keeps it
    v = make_version(tmp_path / "src")
    network = MemoryNetwork(0)
    # The holders' registry gossip runs apart: their peer ids advertise on `network`.
    holders = MemoryNetwork(1)
    async with registry_node(tmp_path / "a", holders, 1) as a, \
            registry_node(tmp_path / "b", holders, 2) as b:
        for holder in (a, b):
            store_version(holder.manifests, v)
        record = TagRecord(PUBLISHER.public_key, "acme/classifier", "stable", v.digest, 1, 1.0)
        await a.agent.publish(sign_tag(record, PUBLISHER))
        identities = [node_identity(i) for i in (1, 2)]  # the keys the nodes serve TLS with
        members = []
        for identity, holder in zip(identities, (a, b), strict=True):
            advert = Advert(peer_id=identity.peer_id, endpoints=(holder.address,), models=(),
                            sequence=0, timestamp=0.0, ttl=0.0, stored=(v.digest,))
            members.append(Membership(network.join(identity.peer_id), identity=identity,
                                      source=functools.partial(copy.copy, advert),
                                      config=MembershipConfig.fast()))

        async def start(identity: Identity) -> Gossip:
            return network.join(identity.peer_id)

        def light_peer(bootstrap: object) -> LightPeer:
            return LightPeer(start, config=MembershipConfig.fast())

        monkeypatch.setattr("swarm.cli._registry_commands._light_peer", light_peer)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(m.run()) for m in members]
            args = parse("pull", "acme/classifier:stable", "--bootstrap", "/ip4/x", "--wait", "0.6")
            assert await COMMANDS["pull"](args) == 0
            for task in tasks:
                task.cancel()
    out = capsys.readouterr().out
    assert f"pulled acme/classifier v1 {v.digest}" in out
    assert "from 2 source(s)" in out
    assert ManifestStore(BlobStore(tmp_path / "data" / "registry")).get(v.digest)


def test_key_prints_the_publisher_public_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli("key") == 0  # the user's key, created on first use (0600)
    printed = capsys.readouterr().out.strip()
    key = tmp_path / "swarm" / "publisher.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert printed == Identity.load(key).public_key.hex()
    assert cli("key", "--key", str(key)) == 0
    assert capsys.readouterr().out.strip() == printed  # the same key, named
    assert cli("key", "--key", str(tmp_path / "missing.key")) == 1
    assert "no publisher key" in capsys.readouterr().err
