"""Model version manifests: the project's own type, its canonical encoding, signing.

A manifest names a model version and everything needed to fetch, check and
serve it: files with their digests and per-chunk digests, tensor specs,
batching defaults and runtime needs, and the publisher's public key. It is
encoded as a `swarm.v1.Manifest` protobuf serialized deterministically; its
digest, SHA-256 of those payload bytes, is the version's identity forever.
`SignedManifest` carries the payload and the publisher's Ed25519 signature over
a domain separator plus the payload, verified before anything else is trusted.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swarm._errors import IntegrityError, InvalidInputError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._tensors import DATATYPES, Tolerance, default_tolerance
from swarm._types import Digest, ModelRef, TensorSpec
from swarm.protocol import Identity, open_envelope, seal
from swarm.registry._store import DEFAULT_CHUNK_SIZE, chunk_count

__all__ = [
    "MANIFEST_DOMAIN",
    "BatchingDefaults",
    "FileEntry",
    "Manifest",
    "ModelFormat",
    "RuntimeNeeds",
    "file_entry",
    "manifest_digest",
    "manifest_for_file",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_DOMAIN = b"swarm/manifest/v1\0"
# 4 MiB chunks of a 100 GiB model list ~25,600 chunk digests (~1 MiB).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CHUNK_SIZE = 64 << 20
MAX_FILES = 1024

_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_DEVICE_KIND = re.compile(r"^[a-z0-9_]{1,32}$")


class ModelFormat(enum.StrEnum):
    """How a version's files are loaded."""

    # One torch.export program (.pt2), loaded by swarm.node._export without running its pickles.
    TORCH_EXPORT = "torch_export"
    # safetensors weights for an architecture built into the node (`Manifest.architecture`).
    SAFETENSORS_BUILTIN = "safetensors_builtin"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version: a blob, and how it is cut into verifiable chunks."""

    # Relative POSIX path inside the version, e.g. "model.pt2" (no "..", no leading "/").
    path: str
    digest: Digest
    size: int
    chunk_size: int
    # SHA-256 of each chunk, in order.
    chunks: tuple[Digest, ...]

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if not all(_PATH_PART.match(p) for p in parts):
            raise ValueError(f"file path must be relative, its parts letters, digits, '.', '_', '-' "
                             f"(not starting with '.'): {self.path!r}")
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {self.chunk_size} outside (0, {MAX_CHUNK_SIZE}]")
        if self.size < 0:
            raise ValueError("file size must be >= 0")
        if len(self.chunks) != chunk_count(self.size, self.chunk_size):
            raise ValueError(f"{self.path}: {self.size} bytes in chunks of {self.chunk_size} make "
                             f"{chunk_count(self.size, self.chunk_size)} chunks, not {len(self.chunks)}")

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index`."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"{self.path} has no chunk {index}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


@dataclass(frozen=True, slots=True)
class BatchingDefaults:
    """The publisher's batching defaults; a node's config may override them."""

    max_batch_size: int = 1
    # Seconds (stored to the microsecond).
    max_queue_delay: float = 0.002
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 0xFFFFFFFF:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_queue_delay < 0:
            raise ValueError("max_queue_delay must be >= 0")
        if any(not 1 <= p <= self.max_batch_size for p in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must lie in [1, max_batch_size]")
        # Normalized to what the encoding keeps, so that a decoded manifest equals the original.
        object.__setattr__(self, "max_queue_delay", round(self.max_queue_delay * 1e6) / 1e6)


@dataclass(frozen=True, slots=True)
class RuntimeNeeds:
    """What a node needs to serve the version."""

    # "any", "cpu", "cuda", ...
    device_kind: str = "any"
    # Device memory needed to load and run it (0 = unknown).
    min_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if not _DEVICE_KIND.match(self.device_kind):
            raise ValueError(f"invalid device kind {self.device_kind!r}")
        if self.min_memory_bytes < 0:
            raise ValueError("min_memory_bytes must be >= 0")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A model version. Its digest (`manifest_digest`) is its identity forever."""

    # "namespace/name".
    name: str
    version: str
    format: ModelFormat
    files: tuple[FileEntry, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Raw 32-byte Ed25519 public key of the publisher, who signs the manifest.
    publisher: bytes
    # Unix seconds (stored to the millisecond).
    created_at: float
    # Built-in architecture name; required for SAFETENSORS_BUILTIN, empty otherwise.
    architecture: str = ""
    batching: BatchingDefaults = field(default_factory=BatchingDefaults)
    runtime: RuntimeNeeds = field(default_factory=RuntimeNeeds)
    # How far honest outputs may differ (client verification, wrong-result evidence);
    # None: the defaults per output datatype (`output_tolerance`).
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        ModelRef(self.name)  # validates the name
        if not _VERSION.match(self.version):
            raise ValueError(f"invalid version {self.version!r}")
        object.__setattr__(self, "format", ModelFormat(self.format))
        if (self.format is ModelFormat.SAFETENSORS_BUILTIN) != bool(self.architecture):
            raise ValueError("an architecture is named by safetensors_builtin manifests, and only by them")
        if not 1 <= len(self.files) <= MAX_FILES:
            raise ValueError(f"a manifest lists 1 to {MAX_FILES} files")
        if len({f.path for f in self.files}) != len(self.files):
            raise ValueError("file paths must be unique")
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            if len({s.name for s in specs}) != len(specs):
                raise ValueError(f"{kind} names must be unique")
            for spec in specs:
                if not spec.name:
                    raise ValueError(f"an {kind} needs a name")
                if spec.datatype not in DATATYPES:
                    raise ValueError(f"{kind} {spec.name!r}: unknown datatype {spec.datatype!r}")
                if any(d < -1 for d in spec.shape):
                    raise ValueError(f"{kind} {spec.name!r}: dimensions are >= 0, or -1 (dynamic)")
        if len(self.publisher) != 32:
            raise ValueError("publisher must be a 32-byte Ed25519 public key")
        if self.created_at < 0:
            raise ValueError("created_at must be >= 0")
        object.__setattr__(self, "created_at", round(self.created_at * 1000) / 1000)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name)

    @property
    def output_tolerance(self) -> Tolerance:
        """The declared tolerance, or the widest default of the output datatypes."""
        if self.tolerance is not None:
            return self.tolerance
        return default_tolerance([s.datatype for s in self.outputs])

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def blobs(self) -> frozenset[Digest]:
        """Digests of the blobs this version needs (what garbage collection must keep)."""
        return frozenset(f.digest for f in self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)


# -- encoding ------------------------------------------------------------------------------


def _to_proto(m: Manifest) -> registry_pb2.Manifest:
    return registry_pb2.Manifest(
        name=m.name,
        version=m.version,
        format=m.format.value,
        architecture=m.architecture,
        files=[registry_pb2.ManifestFile(
            path=f.path, digest=str(f.digest), size=f.size, chunk_size=f.chunk_size,
            chunk_sha256=[bytes.fromhex(c.hex) for c in f.chunks]) for f in m.files],
        inputs=[_tensor_to_proto(s) for s in m.inputs],
        outputs=[_tensor_to_proto(s) for s in m.outputs],
        batching=registry_pb2.BatchingDefaults(
            max_batch_size=m.batching.max_batch_size,
            max_queue_delay_us=round(m.batching.max_queue_delay * 1e6),
            preferred_batch_sizes=list(m.batching.preferred_batch_sizes)),
        runtime=registry_pb2.RuntimeNeeds(device_kind=m.runtime.device_kind,
                                          min_memory_bytes=m.runtime.min_memory_bytes),
        publisher=m.publisher,
        created_at_unix_ms=round(m.created_at * 1000),
        tolerance=None if m.tolerance is None else registry_pb2.ManifestTolerance(
            rtol=m.tolerance.rtol, atol=m.tolerance.atol),
    )


def _tensor_to_proto(spec: TensorSpec) -> registry_pb2.ManifestTensor:
    return registry_pb2.ManifestTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def _from_proto(msg: registry_pb2.Manifest) -> Manifest:
    def tensors(items: Sequence[registry_pb2.ManifestTensor]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

    def chunk(raw: bytes) -> Digest:
        if len(raw) != 32:
            raise ValueError("a chunk digest is 32 bytes")
        return Digest(raw.hex())

    try:
        return Manifest(
            name=msg.name,
            version=msg.version,
            format=ModelFormat(msg.format),
            architecture=msg.architecture,
            files=tuple(FileEntry(
                path=f.path, digest=Digest.parse(f.digest), size=f.size, chunk_size=f.chunk_size,
                chunks=tuple(chunk(c) for c in f.chunk_sha256)) for f in msg.files),
            inputs=tensors(msg.inputs),
            outputs=tensors(msg.outputs),
            batching=BatchingDefaults(
                max_batch_size=msg.batching.max_batch_size,
                max_queue_delay=msg.batching.max_queue_delay_us / 1e6,
                preferred_batch_sizes=tuple(msg.batching.preferred_batch_sizes)),
            runtime=RuntimeNeeds(msg.runtime.device_kind, msg.runtime.min_memory_bytes),
            publisher=msg.publisher,
            created_at=msg.created_at_unix_ms / 1000,
            tolerance=Tolerance(msg.tolerance.rtol, msg.tolerance.atol)
            if msg.HasField("tolerance") else None,
        )
    except (ValueError, InvalidInputError) as exc:
        raise IntegrityError(f"malformed manifest: {exc}") from exc


def canonical_payload(manifest: Manifest) -> bytes:
    """The manifest's canonical bytes: what is signed and what its digest is computed over."""
    return _to_proto(manifest).SerializeToString(deterministic=True)


def manifest_digest(manifest: Manifest) -> Digest:
    """The version's identity: SHA-256 of the canonical payload."""
    return Digest.of(canonical_payload(manifest))


def sign_manifest(manifest: Manifest, identity: Identity) -> bytes:
    """SignedManifest bytes; `identity` must be the manifest's publisher."""
    if identity.public_key != manifest.publisher:
        raise ValueError("a manifest is signed by its publisher's key")
    payload = canonical_payload(manifest)
    return seal(registry_pb2.SignedManifest, MANIFEST_DOMAIN, payload, identity)


def verify_manifest(data: bytes) -> tuple[Manifest, Digest]:
    """Parse and verify SignedManifest bytes; returns the manifest and its digest.

    The signature is checked against the publisher key inside the payload
    before the rest is decoded. Raises IntegrityError on anything wrong. Whether
    that publisher may publish under the manifest's namespace is the tag
    layer's decision (a tag by the namespace owner is what points at a digest).
    """
    msg, payload = open_envelope(data, registry_pb2.SignedManifest, registry_pb2.Manifest,
                                 domain=MANIFEST_DOMAIN, max_bytes=MAX_MANIFEST_BYTES,
                                 what="manifest", key=lambda m: m.publisher)
    # The digest is over the exact signed bytes (which may carry fields this version
    # does not know), not over a re-encoding.
    return _from_proto(msg), Digest.of(payload)


# -- building ------------------------------------------------------------------------------


def file_entry(path: Path, *, name: str | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> FileEntry:
    """Digest, size and chunk digests of the file at `path`, in one streaming pass.

    `name` is the path recorded in the manifest (default: the file's name).
    """
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} outside (0, {MAX_CHUNK_SIZE}]")
    whole = hashlib.sha256()
    chunks: list[Digest] = []
    size = 0
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(Digest.of(block))
            size += len(block)
    return FileEntry(path=name if name is not None else path.name,
                     digest=Digest(whole.hexdigest()), size=size, chunk_size=chunk_size,
                     chunks=tuple(chunks))


def manifest_for_file(path: Path, name: str, version: str, *, format: ModelFormat,
                      inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      publisher: bytes, created_at: float, architecture: str = "",
                      batching: BatchingDefaults | None = None, runtime: RuntimeNeeds | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE,
                      tolerance: Tolerance | None = None) -> Manifest:
    """A single-file manifest for the model file at `path` (hashed in one streaming pass).

    `created_at` is unix seconds (the caller's clock); `publisher` the key that will sign it.
    """
    return Manifest(
        name=name, version=version, format=format, architecture=architecture,
        files=(file_entry(path, chunk_size=chunk_size),),
        inputs=tuple(inputs), outputs=tuple(outputs),
        batching=batching or BatchingDefaults(), runtime=runtime or RuntimeNeeds(),
        publisher=publisher, created_at=created_at, tolerance=tolerance,
    )
