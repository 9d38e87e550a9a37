"""The publisher's side: keys, manifests from .pt2 files, pushes, tag records, pulls.

What `swarm model ...` does, as functions over a RegistryClient (the CLI adds
argument parsing and output). Pure decisions (`next_sequence`,
`resolve_target`, `rollback_target`) are separate from the I/O.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarm._errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
)
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef
from swarm.protocol import Identity
from swarm.registry._client import RegistryClient
from swarm.registry._fetch import Progress
from swarm.registry._manifest import (
    BatchingDefaults,
    Manifest,
    ModelFormat,
    RuntimeNeeds,
    manifest_for_file,
    sign_manifest,
    verify_manifest,
)
from swarm.registry._manifests import ManifestStore
from swarm.registry._store import DEFAULT_CHUNK_SIZE
from swarm.registry._tags import TagRecord, sign_tag

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "PushResult",
    "build_manifest",
    "export_files",
    "load_publisher",
    "next_sequence",
    "publish_tag",
    "publisher_key_path",
    "push",
    "resolve_target",
    "rollback_target",
]

# Batch size recorded for a program whose batch dimension has no upper bound
# (the node's default for exported programs).
DEFAULT_MAX_BATCH_SIZE = 64
_UNBOUNDED = 0xFFFFFFFF
# Bytes per PushModel message (the node re-cuts them into chunks); grpcio streams 1 MiB
# messages several times faster than 4 MiB ones.
_PUSH_PIECE = 1 << 20


# -- keys ----------------------------------------------------------------------------------


def publisher_key_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/swarm/publisher.key`, else `~/.config/swarm/publisher.key`."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path("~/.config").expanduser()
    return root / "swarm" / "publisher.key"


def load_publisher(key: Path | None = None) -> Identity:
    """The publisher's key: `key` if given (must exist), else the user's (created on first use, 0600)."""
    if key is not None:
        if not key.expanduser().is_file():
            raise ConfigError(f"no publisher key at {key}")
        return Identity.load(key.expanduser())
    return Identity.load_or_create(publisher_key_path())


# -- pure decisions ------------------------------------------------------------------------


def next_sequence(seen: int | None, now_ms: int) -> int:
    """Sequence for a new record of a tag: above every one seen, and at least the time in ms
    (so a publisher who has seen nothing still outranks its own earlier records)."""
    return max(0 if seen is None else seen + 1, now_ms)


def resolve_target(listing: registry_pb2.ListModelsResponse, name: str, target: str) -> Digest:
    """The manifest digest a tag target names: `sha256:...`, `name@sha256:...` or `name:tag`.

    A bare name means its `latest` tag. Raises InvalidInputError for a target that names
    another model (InvalidReferenceError for a malformed one), ModelNotFoundError for a
    tag the listing does not know.
    """
    if target.startswith("sha256:"):
        return Digest.parse(target)
    ref = ModelRef.parse(target)
    if ref.name != name:
        raise InvalidInputError(f"{target} is not a version of {name}")
    if ref.digest is not None:
        return ref.digest
    tag = ref.tag or "latest"
    for info in listing.tags:
        if info.name == name and info.tag == tag:
            return Digest.parse(info.target)
    raise ModelNotFoundError(f"no tag {name}:{tag} is known to the node")


def rollback_target(listing: registry_pb2.ListModelsResponse, name: str, tag: str) -> Digest:
    """The version `name:tag` pointed at before its current one (ModelNotFoundError if none)."""
    for info in listing.tags:
        if info.name == name and info.tag == tag:
            if not info.previous:
                raise ModelNotFoundError(f"{name}:{tag} has no earlier version to roll back to")
            return Digest.parse(info.previous)
    raise ModelNotFoundError(f"no tag {name}:{tag} is known to the node")


def _seen_sequence(listing: registry_pb2.ListModelsResponse, name: str, tag: str) -> int | None:
    for info in listing.tags:
        if info.name == name and info.tag == tag:
            return int(info.sequence)
    return None


# -- manifests -----------------------------------------------------------------------------


def build_manifest(path: Path, name: str, version: str, publisher: Identity, *,
                   created_at: float, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Manifest:
    """A torch_export manifest for the .pt2 at `path`, specs read from the program.

    The program is loaded with the node's safe loader (an archive that would run
    code is refused here, before anyone publishes it). The batch dimension's
    upper bound becomes the batching default (DEFAULT_MAX_BATCH_SIZE if unbounded).
    """
    from swarm.modelfile import load_program, program_spec  # torch: only on this path

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    program = load_program(data)
    spec = program_spec(program, _UNBOUNDED)
    max_batch = DEFAULT_MAX_BATCH_SIZE if spec.max_batch_size >= _UNBOUNDED else spec.max_batch_size
    weights = sum(int(t.nbytes) for t in (*program.state_dict.values(), *program.constants.values())
                  if hasattr(t, "nbytes"))
    del program, data
    return manifest_for_file(
        path, name, version, format=ModelFormat.TORCH_EXPORT, inputs=spec.inputs,
        outputs=spec.outputs, publisher=publisher.public_key, created_at=created_at,
        batching=BatchingDefaults(max_batch_size=max_batch),
        runtime=RuntimeNeeds(min_memory_bytes=weights), chunk_size=chunk_size)


# -- node operations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushResult:
    digest: Digest
    manifest: Manifest
    # File bytes the node wrote (bytes it already held are skipped).
    bytes_stored: int


async def _push_messages(signed: bytes, files: Sequence[Path], manifest: Manifest,
                         progress: Progress | None) -> AsyncIterator[registry_pb2.PushChunk]:
    yield registry_pb2.PushChunk(manifest=signed)
    total, sent = manifest.total_size, 0
    for index, (path, entry) in enumerate(zip(files, manifest.files, strict=True)):
        with path.open("rb") as f:
            offset = 0
            while offset < entry.size:
                data = await asyncio.to_thread(f.read, _PUSH_PIECE)
                if not data:
                    raise IntegrityError(f"{path} is shorter than when its manifest was made")
                yield registry_pb2.PushChunk(data=registry_pb2.PushData(
                    file=index, offset=offset, data=data))
                offset += len(data)
                sent += len(data)
                if progress is not None:
                    progress(sent, total)


async def push(client: RegistryClient, path: Path, manifest: Manifest, publisher: Identity, *,
               progress: Progress | None = None) -> PushResult:
    """Upload a single-file version (signed here) to the node behind `client`."""
    signed = sign_manifest(manifest, publisher)
    _, digest = verify_manifest(signed)
    response = await client.push(_push_messages(signed, [path], manifest, progress))
    if Digest.parse(response.digest) != digest:
        raise IntegrityError(f"node stored {response.digest}, not {digest}")
    return PushResult(digest, manifest, response.bytes_stored)


async def publish_tag(client: RegistryClient, publisher: Identity, name: str, tag: str,
                      target: Digest, *, now: float,
                      listing: registry_pb2.ListModelsResponse | None = None) -> TagRecord:
    """Sign and publish `name:tag -> target` through the node (sequence via `next_sequence`).

    The target must be a version of `name` the node can show a manifest for.
    """
    manifest, actual = verify_manifest(await client.manifest(target))
    if actual != target:
        raise IntegrityError(f"node answered manifest {actual} for {target}")
    if manifest.name != name:
        raise InvalidInputError(f"{target.short} is a version of {manifest.name}, not {name}")
    if listing is None:
        listing = await client.list_models(name)
    record = TagRecord(publisher=publisher.public_key, name=name, tag=tag, target=target,
                       sequence=next_sequence(_seen_sequence(listing, name, tag), int(now * 1000)),
                       timestamp=now)
    await client.publish_tag(sign_tag(record, publisher))
    return record


def export_files(manifests: ManifestStore, digest: Digest, out: Path,
                 on_file: Callable[[Path], None] = lambda path: None) -> list[Path]:
    """Copy a stored version's files (verified) to `out`, at their manifest paths."""
    manifest = manifests.get(digest)
    written = []
    for entry in manifest.files:
        target = out / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with manifests.blobs.open_verified(entry.digest) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        on_file(target)
        written.append(target)
    return written
