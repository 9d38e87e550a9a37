"""Content-addressed model registry: blobs, manifests, tags.

_store.py     BlobStore: blobs on disk by SHA-256; atomic writes, verified reads,
              resumable chunk-verified downloads (BlobWriter), garbage collection
_manifest.py  Manifest (a model version), its canonical protobuf encoding and digest,
              publisher signatures; manifest_for_file hashes a model file in one pass
_tags.py      signed TagRecords and the pure TagState machine: highest sequence wins,
              namespace ownership (allowlist, else trust on first use), history for rollback
"""

from swarm.registry._manifest import (
    BatchingDefaults,
    FileEntry,
    Manifest,
    ModelFormat,
    RuntimeNeeds,
    file_entry,
    manifest_digest,
    manifest_for_file,
    sign_manifest,
    verify_manifest,
)
from swarm.registry._store import DEFAULT_CHUNK_SIZE, BlobStore, BlobWriter, StoreUsage
from swarm.registry._tags import (
    Outcome,
    TagEntry,
    TagRecord,
    TagState,
    TagVersion,
    apply_tag,
    previous,
    resolve,
    sign_tag,
    verify_tag,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BatchingDefaults",
    "BlobStore",
    "BlobWriter",
    "FileEntry",
    "Manifest",
    "ModelFormat",
    "Outcome",
    "RuntimeNeeds",
    "StoreUsage",
    "TagEntry",
    "TagRecord",
    "TagState",
    "TagVersion",
    "apply_tag",
    "file_entry",
    "manifest_digest",
    "manifest_for_file",
    "previous",
    "resolve",
    "sign_manifest",
    "sign_tag",
    "verify_manifest",
    "verify_tag",
]
