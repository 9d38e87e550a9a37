"""ManifestStore: the signed manifests of the versions a node holds, beside their blobs.

A signed manifest's bytes do not hash to the version's digest (the digest covers
the payload only), so the payload is stored as a blob in the BlobStore, where
its address *is* the manifest digest and every read re-verifies it, and the
signature sits in a sidecar file `manifests/<hex>.sig` under the store's root.
A manifest is put only after its signature verifies, and re-verified the first
time this process reads it back.

A version is *complete* when its manifest and every blob it lists are stored:
only complete versions are advertised and served.

Methods block on disk I/O: async callers run them in a thread.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import threading
from collections.abc import Iterable, Set
from pathlib import Path

from swarm._errors import IntegrityError, InvalidReferenceError, ModelNotFoundError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest
from swarm.registry._manifest import FileEntry, Manifest, verify_manifest
from swarm.registry._store import BlobStore

__all__ = ["ManifestStore"]


class ManifestStore:
    """Signed manifests by digest; their payloads live in `blobs`, signatures in sidecars."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._dir = blobs.root / "manifests"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Verified manifests by digest; immutable content, so never invalidated (only dropped).
        self._cache: dict[Digest, Manifest] = {}

    def _sig(self, digest: Digest) -> Path:
        return self._dir / f"{digest.hex}.sig"

    # -- writes ------------------------------------------------------------------------------

    def put(self, signed: bytes, expected: Digest | None = None) -> tuple[Manifest, Digest]:
        """Verify SignedManifest bytes and store them; returns the manifest and its digest.

        Raises IntegrityError for a bad signature, a malformed manifest, or a digest
        other than `expected`. Storing a manifest already held is a no-op.
        """
        manifest, digest = verify_manifest(signed)
        if expected is not None and digest != expected:
            raise IntegrityError(f"manifest is {digest}, expected {expected}")
        msg = registry_pb2.SignedManifest.FromString(signed)
        if not self.has(digest):
            # Signature first: a payload blob without its sidecar is not a manifest yet.
            sig = self._sig(digest)
            tmp = sig.with_name(f".{sig.name}.{secrets.token_hex(4)}.tmp")
            try:
                with tmp.open("xb") as f:
                    f.write(msg.signature)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, sig)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            self.blobs.put(msg.payload, expected=digest)
        with self._lock:
            self._cache[digest] = manifest
        return manifest, digest

    def delete(self, digest: Digest) -> bool:
        """Forget a manifest (its file blobs stay until `gc`); True if it was held."""
        with self._lock:
            self._cache.pop(digest, None)
        had = self.blobs.delete(digest)
        with contextlib.suppress(FileNotFoundError):
            self._sig(digest).unlink()
            had = True
        return had

    # -- reads -------------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """Whether the manifest is stored (its files may not be)."""
        return self._sig(digest).is_file() and self.blobs.has(digest)

    def complete(self, digest: Digest) -> bool:
        """Whether the manifest and every blob it lists are stored."""
        try:
            manifest = self.get(digest)
        except (ModelNotFoundError, IntegrityError):
            return False
        return all(self.blobs.has(f.digest) for f in manifest.files)

    def get(self, digest: Digest) -> Manifest:
        """The verified manifest; ModelNotFoundError if absent, IntegrityError if damaged."""
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None:
            if not self.has(digest):
                raise ModelNotFoundError(f"manifest {digest} is not stored here")
            return cached
        manifest, _ = verify_manifest(self.signed(digest))
        with self._lock:
            self._cache[digest] = manifest
        return manifest

    def signed(self, digest: Digest) -> bytes:
        """SignedManifest bytes as stored (payload verified against `digest` on read)."""
        try:
            signature = self._sig(digest).read_bytes()
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"manifest {digest} is not stored here") from exc
        payload = self.blobs.read(digest)
        return registry_pb2.SignedManifest(payload=payload, signature=signature).SerializeToString()

    def versions(self) -> builtins.list[Digest]:
        """Digests of every stored manifest, sorted (complete or not)."""
        out = []
        for entry in self._dir.iterdir():
            if entry.suffix != ".sig" or entry.name.startswith("."):
                continue
            try:
                digest = Digest(entry.stem)
            except InvalidReferenceError:
                continue
            if self.blobs.has(digest):
                out.append(digest)
        return sorted(out, key=lambda d: d.hex)

    def complete_versions(self) -> builtins.list[Digest]:
        """Digests of the versions held entirely (what a node advertises as stored)."""
        return [d for d in self.versions() if self.complete(d)]

    def layout(self, blob: Digest, manifest: Digest | None = None) -> FileEntry:
        """How blob `blob` is cut into chunks, from `manifest` or else any stored manifest listing it.

        Raises ModelNotFoundError when no stored manifest lists the blob.
        """
        candidates: Iterable[Digest] = [manifest] if manifest is not None else self.versions()
        for digest in candidates:
            try:
                m = self.get(digest)
            except (ModelNotFoundError, IntegrityError):
                continue
            for f in m.files:
                if f.digest == blob:
                    return f
        where = f"manifest {manifest}" if manifest is not None else "any manifest held here"
        raise ModelNotFoundError(f"blob {blob} is not listed by {where}")

    # -- garbage collection ------------------------------------------------------------------

    def gc(self, keep: Set[Digest]) -> builtins.list[Digest]:
        """Drop every manifest not in `keep` and every blob no kept manifest lists.

        Returns the removed blob digests (manifest payloads included), sorted.
        """
        kept_blobs: set[Digest] = set()
        for digest in self.versions():
            if digest not in keep:
                # The sidecar goes now; the payload blob with the other unkept blobs below.
                with self._lock:
                    self._cache.pop(digest, None)
                with contextlib.suppress(FileNotFoundError):
                    self._sig(digest).unlink()
                continue
            kept_blobs.add(digest)
            with contextlib.suppress(ModelNotFoundError, IntegrityError):
                kept_blobs.update(self.get(digest).blobs)
        # Partial downloads of kept versions survive too (their manifests are kept).
        return self.blobs.gc(kept_blobs)
