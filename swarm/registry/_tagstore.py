"""TagStore: the signed tag records a node holds, on disk beside its blobs.

Layout under `root` (the BlobStore's root):

    tags/<sha256 of "name:tag">.json   {"version": 1, "records": [hex SignedTag, ...]}
    tags/*.corrupt                      files that could not be parsed, set aside

One file per tag holds the signed records of its history, oldest first, so that a
restarted node knows where each tag points and where it pointed before (rollback).
A file is replaced atomically: temp file, fsync, rename, fsync of the directory, as
blobs are. Nothing read here is trusted: `load` returns the bytes for the agent to
verify (signatures) and replay through apply_tag, as it would records from a peer.

Methods block on disk I/O: async callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TagStore"]

log = logging.getLogger("swarm.registry")

_VERSION = 1
# A tag's file holds at most HISTORY_LIMIT records of ~300 bytes; anything far larger
# was not written by us.
_MAX_FILE_BYTES = 1 << 20


class TagStore:
    """Signed tag records by tag, one atomically replaced file each."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "tags"
        self._dir.mkdir(parents=True, exist_ok=True)
        # Saves of one tag can overlap (one still in its thread when the next starts):
        # they take turns, and one of an older generation than the file's is skipped.
        self._lock = threading.Lock()
        self._written: dict[Path, int] = {}

    def _path(self, name: str, tag: str) -> Path:
        # Names hold "/" and tags may be long: the file is named by a hash of both.
        return self._dir / f"{hashlib.sha256(f'{name}:{tag}'.encode()).hexdigest()}.json"

    def save(self, name: str, tag: str, records: Sequence[bytes], *, generation: int = 0) -> None:
        """Replace the records of `name:tag` (SignedTag bytes, oldest first).

        `generation` numbers the caller's state: a save older than the last one written
        for this tag does nothing.
        """
        path = self._path(name, tag)
        with self._lock:
            if generation < self._written.get(path, -1):
                return
            self._write(path, records)
            self._written[path] = generation

    def _write(self, path: Path, records: Sequence[bytes]) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        body = json.dumps({"version": _VERSION, "records": [r.hex() for r in records]})
        try:
            with tmp.open("x") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self) -> list[bytes]:
        """Every stored record, unverified, oldest first within each tag.

        A file that cannot be read as ours is renamed `<file>.corrupt` (kept for a
        look, never read again) and logged; its tag comes back from peers.
        """
        for leftover in self._dir.glob(".*.tmp"):  # a save interrupted by a crash
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        out: list[bytes] = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                if path.stat().st_size > _MAX_FILE_BYTES:
                    raise ValueError(f"{path.stat().st_size} bytes")
                stored = json.loads(path.read_text())
                if not isinstance(stored, dict) or stored.get("version") != _VERSION:
                    raise ValueError("not a tag record file of this version")
                records = stored.get("records")
                if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
                    raise ValueError("no list of records")
                out.extend(bytes.fromhex(r) for r in records)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                aside = path.with_name(f"{path.name}.{secrets.token_hex(4)}.corrupt")
                with contextlib.suppress(OSError):
                    os.replace(path, aside)
                log.error("tag record file is unreadable; set aside", extra={
                    "file": str(path), "moved_to": aside.name, "error": str(exc)})
        return out
