"""swarm.registry's public surface, pinned: a change here is a change users can see."""

from __future__ import annotations

import swarm.registry


def test_registry_exports() -> None:
    assert set(swarm.registry.__all__) == {
        # the store, manifests and tags (registry core)
        "DEFAULT_CHUNK_SIZE", "DEFAULT_TAG", "BatchingDefaults", "BlobStore", "BlobWriter", "FileEntry",
        "Manifest", "ModelFormat", "Outcome", "RuntimeNeeds", "StoreUsage", "TagEntry",
        "TagRecord", "TagState", "TagVersion", "apply_tag", "file_entry", "manifest_digest",
        "manifest_for_file", "previous", "resolve", "sign_manifest", "sign_tag",
        "verify_manifest", "verify_tag",
        # the publisher's side (the `swarm model` commands in swarm.cli use these)
        "Progress", "build_manifest", "export_files", "load_publisher", "publish_tag",
        "push", "resolve_target", "rollback_target",
        # replication, tags over gossip, rollout, the service
        "TAG_TOPIC", "Deployment", "FetchConfig", "FetchResult", "FetchStats", "Loaded",
        "ManifestStore", "RegistryAgent", "RegistryClient", "RegistryConfig", "RegistryServicer",
        "Rollout", "RolloutConfig", "Served", "ServiceConfig", "Source", "TagBook",
        "add_registry_service", "fetch_version", "next_sequence",
        "owner_keys", "pinned_versions", "publisher_key_path", "under_replicated",
        "volunteer",
    }
    for name in swarm.registry.__all__:
        assert hasattr(swarm.registry, name), name
    assert len(swarm.registry.__all__) == len(set(swarm.registry.__all__))
