"""The `swarm model ...` commands themselves (the parser is in _registry.py, which imports
this module only to run one)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm._errors import IntegrityError, InvalidInputError, UnavailableError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef, PeerId
from swarm.registry import (
    DEFAULT_CHUNK_SIZE,
    BlobStore,
    FetchStats,
    ManifestStore,
    Progress,
    RegistryClient,
    Source,
    build_manifest,
    export_files,
    fetch_version,
    load_publisher,
    publish_tag,
    push,
    resolve_target,
    rollback_target,
)

if TYPE_CHECKING:
    from swarm.protocol import LightPeer

__all__ = ["COMMANDS", "default_store"]


def default_store() -> Path:
    """Where `swarm model pull` keeps versions: the registry store of swarm-node's default
    data dir (SWARM_DATA_DIR, as the node reads it, else ~/.local/share/swarm-node)."""
    data_dir = os.environ.get("SWARM_DATA_DIR") or "~/.local/share/swarm-node"
    return Path(data_dir).expanduser() / "registry"


# -- reaching a node -----------------------------------------------------------------------


@dataclass
class _Link:
    """The node a command acts through, and who stores what (for pulls)."""

    client: RegistryClient
    holders: Callable[[Digest], list[str]]
    opened: list[RegistryClient] = field(default_factory=list)
    # Swarm mode: the peer advertising an address (its TLS certificate is pinned to it).
    peer_of: Callable[[str], PeerId | None] = lambda address: None

    def sources(self, digest: Digest) -> list[Source]:
        out: list[Source] = []
        for address in self.holders(digest) or [self.client.address]:
            if address == self.client.address:
                out.append(self.client)
            else:
                client = RegistryClient(address, timeout=self.client.timeout,
                                        peer=self.peer_of(address))
                self.opened.append(client)
                out.append(client)
        return out


def _light_peer(bootstrap: Sequence[str]) -> LightPeer:
    from swarm.protocol import LightPeer

    return LightPeer.libp2p(bootstrap)


@contextlib.asynccontextmanager
async def _link(args: argparse.Namespace) -> AsyncIterator[_Link]:
    if args.node:
        async with RegistryClient(args.node, timeout=args.timeout) as client:
            yield _Link(client, lambda digest: [args.node])
        return
    async with _light_peer(args.bootstrap) as peer:
        view = await peer.settle(args.wait)
        nodes = [e for e in view if e.advert.endpoints and not e.advert.draining]
        if not nodes:
            raise UnavailableError("no node seen in the swarm (is the bootstrap address right?)")
        entry = random.choice(nodes)

        def holders(digest: Digest) -> list[str]:
            return [e.advert.endpoints[0] for e in peer.view.holders(digest)
                    if e.advert.endpoints and not e.advert.draining]

        def peer_of(address: str) -> PeerId | None:
            return next((e.peer_id for e in peer.view
                         if e.advert.endpoints and e.advert.endpoints[0] == address), None)

        link = _Link(RegistryClient(entry.advert.endpoints[0], timeout=args.timeout,
                                    peer=entry.peer_id), holders, peer_of=peer_of)
        try:
            yield link
        finally:
            for client in (link.client, *link.opened):
                await client.close()


# -- output --------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator[Progress]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
             TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _say(text: str) -> None:
    print(text, flush=True)


# -- commands ------------------------------------------------------------------------------


def _model_name(text: str) -> str:
    ref = ModelRef.parse(text)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidInputError(f"--name takes a bare 'namespace/name', not {text!r}")
    return ref.name


def _tag_ref(text: str) -> tuple[str, str]:
    ref = ModelRef.parse(text)
    if ref.tag is None:
        raise InvalidInputError(f"expected 'namespace/name:tag', got {text!r}")
    return ref.name, ref.tag


async def _push(args: argparse.Namespace) -> int:
    name = _model_name(args.name)
    identity = await asyncio.to_thread(load_publisher, args.key)
    version = args.version or args.tag or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    chunk_size = DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size
    manifest = await asyncio.to_thread(build_manifest, args.file, name, version, identity,
                                       created_at=time.time(), chunk_size=chunk_size)
    async with _link(args) as link:
        with _progress_bar(f"push {name} {version}") as progress:
            result = await push(link.client, args.file, manifest, identity, progress=progress)
        _say(f"pushed {name} {version} as {result.digest} to {link.client.address} "
             f"({result.bytes_stored} bytes stored)")
        if args.tag:
            record = await publish_tag(link.client, identity, name, args.tag, result.digest,
                                       now=time.time())
            _say(f"tagged {name}:{args.tag} -> {result.digest} (sequence {record.sequence})")
    return 0


async def _ls(args: argparse.Namespace) -> int:
    name = _model_name(args.name) if args.name else ""
    async with _link(args) as link:
        listing = await link.client.list_models(name)
        node = link.client.address  # with --bootstrap, whichever node the view offered
    if args.json:
        print(json.dumps({"node": node, **_listing_json(listing)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # A terminal gets short digests; a pipe or a file the whole of every cell.
    tty = sys.stdout.isatty()

    def digest(text: str) -> str:
        return text[:19] if tty else text

    console = Console(width=None if tty else 100_000)
    tags = Table("tag", "digest", "sequence", "previous", title=f"tags known to {node}")
    for t in listing.tags:
        tags.add_row(f"{t.name}:{t.tag}", digest(t.target), str(t.sequence),
                     digest(t.previous) if t.previous else "-")
    versions = Table("name", "version", "digest", "size", "stored", title=f"versions on {node}")
    for v in listing.versions:
        versions.add_row(v.name, v.version, digest(v.digest), f"{v.size:,}",
                         "yes" if v.complete else "partial")
    console.print(tags)
    console.print(versions)
    return 0


def _listing_json(listing: registry_pb2.ListModelsResponse) -> dict[str, Any]:
    return {
        "tags": [{"name": t.name, "tag": t.tag, "target": t.target, "sequence": t.sequence,
                  "previous": t.previous or None, "publisher": t.publisher.hex()}
                 for t in listing.tags],
        "versions": [{"digest": v.digest, "name": v.name, "version": v.version, "size": v.size,
                      "complete": v.complete} for v in listing.versions],
    }


async def _tag(args: argparse.Namespace) -> int:
    name, tag = _tag_ref(args.tag)
    identity = await asyncio.to_thread(load_publisher, args.key)
    async with _link(args) as link:
        listing = await link.client.list_models(name)
        target = resolve_target(listing, name, args.target)
        record = await publish_tag(link.client, identity, name, tag, target, now=time.time(),
                                   listing=listing)
    _say(f"tagged {name}:{tag} -> {target} (sequence {record.sequence})")
    return 0


async def _rollback(args: argparse.Namespace) -> int:
    name, tag = _tag_ref(args.tag)
    identity = await asyncio.to_thread(load_publisher, args.key)
    async with _link(args) as link:
        listing = await link.client.list_models(name)
        target = rollback_target(listing, name, tag)
        record = await publish_tag(link.client, identity, name, tag, target, now=time.time(),
                                   listing=listing)
    _say(f"rolled {name}:{tag} back to {target} (sequence {record.sequence})")
    return 0


async def _pull(args: argparse.Namespace) -> int:
    if args.no_store and args.store is not None:
        raise InvalidInputError("give --store DIR or --no-store, not both")
    store = None if args.no_store else (args.store or default_store()).expanduser()
    with contextlib.ExitStack() as stack:
        root: Path = (store if store is not None else
                      Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-pull-"))))
        manifests = ManifestStore(BlobStore(root))
        stats = FetchStats()
        async with _link(args) as link:
            name = ""
            if args.ref.startswith("sha256:"):
                digest = Digest.parse(args.ref)
            else:
                name = ModelRef.parse(args.ref).name
                digest = resolve_target(await link.client.list_models(name), name, args.ref)
            with _progress_bar(f"pull {args.ref}") as progress:
                result = await fetch_version(manifests, digest, link.sources(digest),
                                             progress=progress, stats=stats)
        manifest = result.manifest
        if name and manifest.name != name:
            # The node's tag named a version of another model.
            raise IntegrityError(f"{digest.short} is a version of {manifest.name}, not {name}")
        _say(f"pulled {manifest.name} {manifest.version} {digest}: {manifest.total_size} bytes "
             f"verified ({stats.bytes_fetched} fetched from {len(stats.bytes_by_source)} "
             f"source(s), {stats.bytes_resumed} resumed, {stats.chunks_rejected} chunks rejected)")
        if args.output is not None:
            for path in await asyncio.to_thread(export_files, manifests, digest, args.output):
                _say(f"wrote {path}")
        if store is not None:
            _say(f"stored in {store}")
        elif args.output is None:
            _say("nothing kept (--no-store): --output DIR writes the files")
    return 0


# -- parser --------------------------------------------------------------------------------


async def _show_key(args: argparse.Namespace) -> int:
    identity = await asyncio.to_thread(load_publisher, args.key)
    # The form an `[allowlist]` (node config) or `allowlist=` (SDK) takes.
    print(identity.public_key.hex())
    return 0



COMMANDS = {"push": _push, "ls": _ls, "tag": _tag, "rollback": _rollback, "pull": _pull,
             "key": _show_key}


