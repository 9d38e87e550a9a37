"""Content-addressed blob store on local disk.

Layout under `root`:

    blobs/sha256/ab/abcdef...   published blobs: complete, read-only, named by their SHA-256
    partial/<hex>               a download in progress (verified chunks, in order)
    partial/<hex>.json          its record: layout and how many verified chunks it holds
    tmp/                        whole-blob writes before they are published
    quarantine/                 blobs that failed verification on read (cleared by gc)

Only complete, verified content is ever renamed into blobs/, so a crash at any
point leaves either no blob or the whole blob. Reads recompute the digest; a
blob that no longer matches is moved to quarantine and never returned.

A download is resumable: chunks are verified against the manifest's chunk
digests before they touch the disk, and `begin` on a digest with a partial
re-verifies the chunks its record names (rebuilding the running whole-file
hash at the same time) and continues after the last good one.

Methods block on disk I/O and fsync: async callers run them in a thread. One
BlobStore instance owns a root; it is safe to use from several threads.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from swarm._errors import (
    ClosedError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    ModelNotFoundError,
)
from swarm._types import Digest

__all__ = ["DEFAULT_CHUNK_SIZE", "BlobStore", "BlobWriter", "StoreUsage", "chunk_count"]

DEFAULT_CHUNK_SIZE = 4 << 20
_READ_SIZE = 1 << 20
_RECORD_VERSION = 1


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks a blob of `size` bytes has when cut every `chunk_size` bytes (0 for an empty blob)."""
    return -(-size // chunk_size)


def _layout_id(chunks: Sequence[Digest]) -> str:
    # Identifies the chunk list in the partial record without storing all of it.
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(bytes.fromhex(chunk.hex))
    return h.hexdigest()


def _sha256_of(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while block := f.read(_READ_SIZE):
        h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """Bytes on disk, by kind."""

    blob_count: int
    blob_bytes: int
    # Partial downloads, temp files and quarantined blobs.
    pending_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.pending_bytes


class BlobStore:
    """Blobs on disk addressed by SHA-256; atomic writes, verified reads, resumable downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs" / "sha256"
        self._partial = root / "partial"
        self._tmp = root / "tmp"
        self._quarantine = root / "quarantine"
        for d in (self._blobs, self._partial, self._tmp, self._quarantine):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Digests with an open writer, and temp files being written: gc leaves them alone.
        self._writing: set[Digest] = set()
        self._temps: set[str] = set()

    # -- paths -------------------------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        """Where the blob `digest` lives (whether or not it is there)."""
        return self._blobs / digest.hex[:2] / digest.hex

    def _partial_data(self, digest: Digest) -> Path:
        return self._partial / digest.hex

    def _partial_record(self, digest: Digest) -> Path:
        return self._partial / f"{digest.hex}.json"

    # -- queries -----------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """Whether the blob is stored (not re-verified; reads verify)."""
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        """Size in bytes of a stored blob; raises ModelNotFoundError if absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"blob {digest} is not stored here") from exc

    def list(self) -> list[Digest]:
        """Every stored blob, sorted."""
        return sorted(self._iter_blobs(), key=lambda d: d.hex)

    def _iter_blobs(self) -> Iterator[Digest]:
        for shard in self._blobs.iterdir():
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                try:
                    digest = Digest(entry.name)
                except InvalidReferenceError:
                    continue
                if digest.hex[:2] == shard.name:
                    yield digest

    def usage(self) -> StoreUsage:
        """Disk usage of blobs and of everything pending (partials, temps, quarantine)."""
        count = blob_bytes = 0
        for digest in self._iter_blobs():
            with contextlib.suppress(FileNotFoundError):
                blob_bytes += self.path(digest).stat().st_size
                count += 1
        pending = 0
        for d in (self._partial, self._tmp, self._quarantine):
            for entry in d.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    pending += entry.stat().st_size
        return StoreUsage(count, blob_bytes, pending)

    # -- verified reads ----------------------------------------------------------------------

    def read(self, digest: Digest) -> bytes:
        """The blob's bytes, verified against its digest.

        Raises ModelNotFoundError if absent, IntegrityError (after quarantining
        the blob) if its content no longer matches.
        """
        with self._open(digest) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != digest.hex:
            self._quarantine_blob(digest)
            raise IntegrityError(f"blob {digest} is corrupted on disk; quarantined")
        return data

    def open_verified(self, digest: Digest) -> BinaryIO:
        """An open binary file of the blob, positioned at 0, after verifying all of it.

        Blobs are never modified in place (writes publish new files by rename),
        so the verified file stays what was verified while it is open.
        """
        f = self._open(digest)
        try:
            h = hashlib.sha256()
            while block := f.read(_READ_SIZE):
                h.update(block)
            if h.hexdigest() != digest.hex:
                self._quarantine_blob(digest)
                raise IntegrityError(f"blob {digest} is corrupted on disk; quarantined")
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return f

    def read_chunk(self, digest: Digest, offset: int, length: int, expected: Digest) -> bytes:
        """`length` bytes at `offset` of a stored blob, checked against the chunk digest `expected`.

        For serving chunks to peers without re-hashing the whole blob per request.
        On a mismatch the whole blob is re-hashed: if it fails its own digest it is
        quarantined (IntegrityError); if it is intact, `expected` was wrong, which is
        the manifest's fault and removes nothing (InvalidInputError). A range outside
        the blob raises ValueError.
        """
        with self._open(digest) as f:
            size = os.fstat(f.fileno()).st_size
            if offset < 0 or length < 0 or offset + length > size:
                raise ValueError(f"range {offset}+{length} outside blob {digest.short} of {size} bytes")
            f.seek(offset)
            data = f.read(length)
            if len(data) == length and hashlib.sha256(data).hexdigest() == expected.hex:
                return data
            # The chunk list comes from a manifest, which anyone can sign: a mismatch proves
            # the blob corrupted only if the blob fails its own digest. Re-hash it (from the
            # same open file) before removing anything.
            f.seek(0)
            intact = _sha256_of(f) == digest.hex
        if intact:
            raise InvalidInputError(f"chunk {expected.short} at {offset} is not part of blob "
                                    f"{digest.short}: the manifest's chunk list does not describe it")
        self._quarantine_blob(digest)
        raise IntegrityError(f"blob {digest} is corrupted on disk; quarantined")

    def _open(self, digest: Digest) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"blob {digest} is not stored here") from exc

    def _quarantine_blob(self, digest: Digest) -> None:
        target = self._quarantine / f"{digest.hex}.{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path(digest), target)

    # -- whole-blob writes -------------------------------------------------------------------

    def put(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store `data` atomically; returns its digest. IntegrityError if it is not `expected`."""
        digest = Digest.of(data)
        if expected is not None and digest != expected:
            raise IntegrityError(f"data is {digest}, expected {expected}")
        if self.has(digest):
            return digest
        with self._temp() as (tmp, f):
            f.write(data)
            self._publish(tmp, f, digest)
        return digest

    def put_file(self, source: Path, expected: Digest | None = None) -> Digest:
        """Copy the file at `source` in atomically (one streaming pass); returns its digest."""
        h = hashlib.sha256()
        with self._temp() as (tmp, f):
            with source.open("rb") as src:
                while block := src.read(_READ_SIZE):
                    h.update(block)
                    f.write(block)
            digest = Digest(h.hexdigest())
            if expected is not None and digest != expected:
                raise IntegrityError(f"{source} is {digest}, expected {expected}")
            self._publish(tmp, f, digest)
        return digest

    @contextlib.contextmanager
    def _temp(self) -> Iterator[tuple[Path, BinaryIO]]:
        name = f"{os.getpid()}-{secrets.token_hex(8)}"
        tmp = self._tmp / name
        with self._lock:
            self._temps.add(name)
        try:
            with tmp.open("xb") as f:
                yield tmp, f
        finally:
            _unlink(tmp)  # nothing left once published; the leftovers of a failure otherwise
            with self._lock:
                self._temps.discard(name)

    def _publish(self, tmp: Path, f: BinaryIO, digest: Digest) -> None:
        """Make the complete, verified file `tmp` (open as `f`) the blob `digest`."""
        f.flush()
        os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        target = self.path(digest)
        created = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Replacing an existing blob swaps in identical, just-verified content (and heals
        # a corrupted one); readers holding the old file keep reading the old inode.
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if created:
            _fsync_dir(target.parent.parent)

    # -- resumable chunked writes ------------------------------------------------------------

    def begin(self, expected: Digest, size: int, chunks: Sequence[Digest],
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobWriter:
        """Start or resume writing blob `expected`, one verified chunk at a time.

        `chunks` are the SHA-256 of each `chunk_size` piece (the last may be
        shorter), as a manifest lists them. If a partial download with the same
        layout exists, its chunks are re-verified and the writer continues after
        the last good one (`writer.next_index`). If the blob is already stored the
        layout is checked against it (one read of the blob), and the writer is complete,
        refuses chunks, and `commit` does nothing.

        Raises ValueError for an inconsistent layout (a caller's bug: manifests are
        checked), InvalidInputError for a layout that does not describe the stored blob,
        ConflictError for a digest that already has an open writer.
        """
        if size < 0 or not 0 < chunk_size <= 0xFFFFFFFF:
            raise ValueError(f"bad layout: size {size}, chunk size {chunk_size}")
        if len(chunks) != chunk_count(size, chunk_size):
            raise ValueError(f"{size} bytes in chunks of {chunk_size} make "
                             f"{chunk_count(size, chunk_size)} chunks, not {len(chunks)}")
        with self._lock:
            if expected in self._writing:
                raise ConflictError(f"blob {expected} already has an open writer")
            self._writing.add(expected)
        try:
            if self._describes_stored(expected, size, chunk_size, chunks):
                self._drop_partial(expected)
                return BlobWriter(self, expected, size, chunk_size, tuple(chunks), None,
                                  hashlib.sha256(), len(chunks), stored=True)
            return self._open_partial(expected, size, chunk_size, tuple(chunks))
        except BaseException:
            self._release(expected)
            raise

    def _describes_stored(self, digest: Digest, size: int, chunk_size: int,
                          chunks: Sequence[Digest]) -> bool:
        """Whether the blob is stored and the layout describes it (False: not stored).

        A layout comes from a manifest, which anyone can sign: one that does not describe
        the stored, intact blob raises InvalidInputError, so that no manifest listing the
        blob with a made-up chunk list is ever completed by it. A stored blob that fails
        its own digest is quarantined, and the caller writes it afresh. One read of the blob.
        """
        try:
            f = self._open(digest)
        except ModelNotFoundError:
            return False
        with f:
            whole = hashlib.sha256()
            matches = os.fstat(f.fileno()).st_size == size
            index = 0
            while block := f.read(chunk_size):
                whole.update(block)
                if matches and (index >= len(chunks)
                                or hashlib.sha256(block).hexdigest() != chunks[index].hex):
                    matches = False
                index += 1
        if whole.hexdigest() != digest.hex:
            self._quarantine_blob(digest)
            return False
        if not matches:
            raise InvalidInputError(f"the chunk list of blob {digest.short} ({size} bytes in "
                                    f"chunks of {chunk_size}) does not describe the blob held here")
        return True

    def _open_partial(self, digest: Digest, size: int, chunk_size: int,
                      chunks: tuple[Digest, ...]) -> BlobWriter:
        layout = {"version": _RECORD_VERSION, "size": size, "chunk_size": chunk_size,
                  "layout": _layout_id(chunks)}
        claimed = 0
        record = self._load_record(digest)
        if record is not None and {k: record.get(k) for k in layout} == layout:
            claimed = record.get("verified", 0)
            if not isinstance(claimed, int) or not 0 <= claimed <= len(chunks):
                claimed = 0
        data_path = self._partial_data(digest)
        # A commit that failed after making the file read-only (just before the rename).
        with contextlib.suppress(FileNotFoundError):
            os.chmod(data_path, 0o644)
        f: BinaryIO = data_path.open("r+b" if claimed and data_path.exists() else "w+b")
        try:
            hasher = hashlib.sha256()
            good = 0
            # Re-verify what the record claims: the record is written without fsync, and
            # the whole-file hash must be rebuilt anyway to check the digest at commit.
            for index in range(claimed):
                data = f.read(_chunk_length(index, size, chunk_size))
                if hashlib.sha256(data).hexdigest() != chunks[index].hex:
                    break
                hasher.update(data)
                good += 1
            f.truncate(good * chunk_size)
            f.seek(good * chunk_size)
            writer = BlobWriter(self, digest, size, chunk_size, chunks, f, hasher, good,
                                stored=False)
            self._save_record(digest, {**layout, "verified": good})
        except BaseException:
            f.close()
            raise
        return writer

    def _load_record(self, digest: Digest) -> dict[str, Any] | None:
        try:
            record = json.loads(self._partial_record(digest).read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def _save_record(self, digest: Digest, record: dict[str, Any]) -> None:
        # Not fsynced: a record lost or torn by a crash only costs re-downloading, and
        # whatever it claims is re-verified on resume.
        path = self._partial_record(digest)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _drop_partial(self, digest: Digest) -> None:
        _unlink(self._partial_data(digest))
        _unlink(self._partial_record(digest))
        _unlink(self._partial_record(digest).with_suffix(".json.tmp"))

    def _release(self, digest: Digest) -> None:
        with self._lock:
            self._writing.discard(digest)

    # -- removal -----------------------------------------------------------------------------

    def delete(self, digest: Digest) -> bool:
        """Remove the blob and any partial download of it; True if a blob was removed.

        Raises ConflictError while a writer of it is open.
        """
        with self._lock:
            if digest in self._writing:
                raise ConflictError(f"blob {digest} has an open writer")
        self._drop_partial(digest)
        return _unlink(self.path(digest))

    def gc(self, keep: Set[Digest]) -> builtins.list[Digest]:
        """Remove every blob and partial download not in `keep`; returns their digests, sorted.

        `keep` is every file digest that a kept manifest references. Open writers,
        in-flight temp files and partials of kept digests survive; leftover temp
        files and the quarantine are cleared.
        """
        # Holding the lock throughout keeps a writer from starting on something gc removes.
        with self._lock:
            return self._gc(keep)

    def _gc(self, keep: Set[Digest]) -> builtins.list[Digest]:
        writing, temps = self._writing, self._temps
        removed: set[Digest] = set()
        for digest in list(self._iter_blobs()):
            if digest not in keep and digest not in writing and _unlink(self.path(digest)):
                removed.add(digest)
        for entry in list(self._partial.iterdir()):
            try:
                digest = Digest(entry.name.split(".", 1)[0])
            except InvalidReferenceError:
                _unlink(entry)
                continue
            if digest in writing:
                continue
            if self.has(digest):
                _unlink(entry)  # the leftover of a commit interrupted after its rename
            elif digest not in keep and _unlink(entry):
                removed.add(digest)
        for entry in list(self._tmp.iterdir()):
            if entry.name not in temps:
                _unlink(entry)
        for entry in list(self._quarantine.iterdir()):
            _unlink(entry)
        return sorted(removed, key=lambda d: d.hex)


def _chunk_length(index: int, size: int, chunk_size: int) -> int:
    return min(chunk_size, size - index * chunk_size)


class BlobWriter:
    """Writes one blob chunk by chunk, in order; made by `BlobStore.begin`.

    Each chunk is checked against its digest before it is written, so a bad
    chunk leaves the writer as it was. `close()` (or leaving a `with` block)
    keeps the partial download for a later `begin` to resume; `commit()`
    checks the whole digest and publishes the blob atomically; `discard()`
    throws the partial away.
    """

    def __init__(self, store: BlobStore, digest: Digest, size: int, chunk_size: int,
                 chunks: tuple[Digest, ...], file: BinaryIO | None, hasher: hashlib._Hash,
                 verified: int, *, stored: bool) -> None:
        self.digest = digest
        self.size = size
        self.chunk_size = chunk_size
        self.chunks = chunks
        self._store = store
        self._file = file
        self._hasher = hasher
        self._next = verified
        self._stored = stored
        self._closed = False

    @property
    def next_index(self) -> int:
        """Index of the next chunk to write (= verified chunks held)."""
        return self._next

    @property
    def offset(self) -> int:
        """Bytes verified and held so far."""
        return min(self._next * self.chunk_size, self.size)

    @property
    def complete(self) -> bool:
        """Every chunk is held (or the blob was already stored)."""
        return self._next == len(self.chunks)

    def write_chunk(self, index: int, data: bytes, *, verified: bool = False) -> None:
        """Append chunk `index`, which must be `next_index`.

        Raises IntegrityError if `data` has the wrong length or digest (nothing is
        written), ValueError if `index` is not the next chunk (out of order or past
        the end), ClosedError if the writer is closed. `verified=True` says the caller has just
        hashed these very bytes against `chunks[index]` (a fetcher does, to blame the
        source), so the chunk is not hashed a second time; `commit()` still checks
        the whole blob, so a wrong claim can never publish a bad blob.
        """
        self._check_open()
        if self._stored:
            raise ValueError(f"blob {self.digest.short} is already stored; nothing to write")
        if not 0 <= index < len(self.chunks):
            raise ValueError(f"chunk {index} is past the end of blob {self.digest.short} "
                             f"({len(self.chunks)} chunks)")
        if index != self._next:
            raise ValueError(f"chunk {index} of blob {self.digest.short} written out of order; "
                             f"expected chunk {self._next}")
        want = _chunk_length(index, self.size, self.chunk_size)
        if len(data) != want:
            raise IntegrityError(f"chunk {index} of blob {self.digest.short} is {len(data)} bytes, "
                                 f"expected {want}")
        if not verified and hashlib.sha256(data).hexdigest() != self.chunks[index].hex:
            raise IntegrityError(f"chunk {index} of blob {self.digest.short} does not match "
                                 f"{self.chunks[index]}")
        if self._file is None:  # only a stored blob's writer has no file
            raise ValueError(f"blob {self.digest.short} is already stored")
        self._file.seek(index * self.chunk_size)
        self._file.write(data)
        # Flushed before the record claims it, so a crash of this process loses nothing
        # the record names (a machine crash is caught by re-verification on resume).
        self._file.flush()
        self._hasher.update(data)
        self._next += 1
        self._store._save_record(self.digest, {
            "version": _RECORD_VERSION, "size": self.size, "chunk_size": self.chunk_size,
            "layout": _layout_id(self.chunks), "verified": self._next})

    def commit(self) -> None:
        """Verify the whole digest and publish the blob atomically; closes the writer.

        Raises ValueError if chunks are missing; IntegrityError (and discards the
        partial) if the chunks do not add up to the blob's digest, which means the
        chunk list itself was wrong.
        """
        self._check_open()
        if not self.complete:
            raise ValueError(f"blob {self.digest.short} has {self._next} of "
                             f"{len(self.chunks)} chunks; cannot commit")
        try:
            if self._stored or self._file is None:
                return
            if self._hasher.hexdigest() != self.digest.hex:
                self._file.close()
                self._store._drop_partial(self.digest)
                raise IntegrityError(f"chunks add up to sha256:{self._hasher.hexdigest()}, "
                                     f"not {self.digest}; partial discarded")
            self._store._publish(self._store._partial_data(self.digest), self._file, self.digest)
            self._file.close()
            self._store._drop_partial(self.digest)
        finally:
            self._finish()

    def close(self) -> None:
        """Stop writing, keeping the verified chunks for a later `begin` to resume."""
        if not self._closed:
            if self._file is not None:
                self._file.close()
            self._finish()

    def discard(self) -> None:
        """Stop writing and delete the partial download."""
        if not self._closed:
            self.close()
            self._store._drop_partial(self.digest)

    def _finish(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._closed = True
        self._store._release(self.digest)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"writer of blob {self.digest.short} is closed")

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
