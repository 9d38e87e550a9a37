"""Content-addressed model registry: blobs, manifests, tags.

_store.py     BlobStore: blobs on disk by SHA-256; atomic writes, verified reads,
              resumable chunk-verified downloads (BlobWriter), garbage collection
_manifest.py  Manifest (a model version), its canonical protobuf encoding and digest,
              publisher signatures; manifest_for_file hashes a model file in one pass
_tags.py      signed TagRecords and the pure TagState machine: highest sequence wins,
              namespace ownership (allowlist, else trust on first use), history for rollback,
              bounds on namespaces per key and tags (TagLimits)
_tagstore.py  TagStore: each tag's signed history on disk beside the blobs (atomic files),
              reloaded and re-verified by the agent at start
_manifests.py ManifestStore: signed manifests beside their blobs (payload blob + signature sidecar)
_service.py   RegistryServicer: the swarm.v1.RegistryService gRPC servicer (manifests, blob
              ranges, listing, pushes, tags)
_client.py    RegistryClient: its gRPC client (a fetch Source; the CLI's connection)
_fetch.py     fetch_version: parallel, verified, resumable fetch of a version from several peers
_agent.py     RegistryAgent: tags over gossip, resolve/watch, tag sync, volunteer replication;
              the pure `volunteer` decision
_rollout.py   Rollout: load + warm up, atomic switch, linger, drain, unload; `follow` a tag
_publish.py   the publisher's side: key location, manifests from .pt2, push, tag sequences
"""

from swarm.registry._agent import (
    TAG_TOPIC,
    RegistryAgent,
    RegistryConfig,
    pinned_versions,
    under_replicated,
    volunteer,
)
from swarm.registry._client import RegistryClient
from swarm.registry._fetch import (
    FetchConfig,
    FetchResult,
    FetchStats,
    Progress,
    Source,
    fetch_version,
)
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
from swarm.registry._manifests import ManifestStore
from swarm.registry._publish import (
    build_manifest,
    export_files,
    load_publisher,
    next_sequence,
    publish_tag,
    publisher_key_path,
    push,
    resolve_target,
    rollback_target,
)
from swarm.registry._rollout import Deployment, Loaded, Rollout, RolloutConfig, Served
from swarm.registry._service import RegistryServicer, ServiceConfig, TagBook, add_registry_service
from swarm.registry._store import DEFAULT_CHUNK_SIZE, BlobStore, BlobWriter, StoreUsage
from swarm.registry._tags import (
    DEFAULT_TAG,
    Outcome,
    TagEntry,
    TagRecord,
    TagState,
    TagVersion,
    apply_tag,
    owner_keys,
    previous,
    resolve,
    sign_tag,
    verify_tag,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_TAG",
    "TAG_TOPIC",
    "BatchingDefaults",
    "BlobStore",
    "BlobWriter",
    "Deployment",
    "FetchConfig",
    "FetchResult",
    "FetchStats",
    "FileEntry",
    "Loaded",
    "Manifest",
    "ManifestStore",
    "ModelFormat",
    "Outcome",
    "Progress",
    "RegistryAgent",
    "RegistryClient",
    "RegistryConfig",
    "RegistryServicer",
    "Rollout",
    "RolloutConfig",
    "RuntimeNeeds",
    "Served",
    "ServiceConfig",
    "Source",
    "StoreUsage",
    "TagBook",
    "TagEntry",
    "TagRecord",
    "TagState",
    "TagVersion",
    "add_registry_service",
    "apply_tag",
    "build_manifest",
    "export_files",
    "fetch_version",
    "file_entry",
    "load_publisher",
    "manifest_digest",
    "manifest_for_file",
    "next_sequence",
    "owner_keys",
    "pinned_versions",
    "previous",
    "publish_tag",
    "publisher_key_path",
    "push",
    "resolve",
    "resolve_target",
    "rollback_target",
    "sign_manifest",
    "sign_tag",
    "under_replicated",
    "verify_manifest",
    "verify_tag",
    "volunteer",
]
