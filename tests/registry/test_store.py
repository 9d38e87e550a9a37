"""BlobStore: atomic publication, verified reads, resumable chunked writes, gc."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swarm._errors import ClosedError, ConflictError, IntegrityError, ModelNotFoundError
from swarm._types import Digest
from swarm.registry import BlobStore

CHUNK = 1024


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(n))


def layout(data: bytes, chunk_size: int = CHUNK) -> tuple[Digest, list[bytes], list[Digest]]:
    pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    return Digest.of(data), pieces, [Digest.of(p) for p in pieces]


def flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def run_child(root: Path, body: str) -> int:
    """Run `body` in a fresh interpreter with `store = BlobStore(root)`; returns its exit code."""
    code = "from pathlib import Path\nimport os\nfrom swarm._types import Digest\n" \
           "from swarm.registry import BlobStore\n" \
           f"store = BlobStore(Path({str(root)!r}))\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode


def test_put_read_roundtrip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(5000)
    digest = store.put(data)
    assert digest == Digest.of(data)
    assert store.has(digest)
    assert store.size(digest) == 5000
    assert store.read(digest) == data
    with store.open_verified(digest) as f:
        assert f.read() == data
    assert store.list() == [digest]
    assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    usage = store.usage()
    assert (usage.blob_count, usage.blob_bytes, usage.pending_bytes) == (1, 5000, 0)
    # Idempotent, and files are published read-only.
    assert store.put(data) == digest
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444


def test_put_file_checks_expected_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    source = tmp_path / "model.bin"
    source.write_bytes(blob(3000))
    with pytest.raises(IntegrityError):
        store.put_file(source, expected=Digest.of(b"something else"))
    assert store.list() == []
    assert store.usage().pending_bytes == 0
    digest = store.put_file(source, expected=Digest.of(source.read_bytes()))
    assert store.read(digest) == source.read_bytes()


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    missing = Digest.of(b"nope")
    assert not store.has(missing)
    for call in (store.read, store.open_verified, store.size):
        with pytest.raises(ModelNotFoundError):
            call(missing)
    assert store.delete(missing) is False


def test_crash_between_write_and_rename_leaves_no_blob(tmp_path: Path) -> None:
    data = blob(4096)
    # The process dies (no cleanup runs) after the temp file is written and fsynced.
    rc = run_child(tmp_path, """
        os.replace = lambda *a, **k: os._exit(17)
        store.put(bytes((i * 31 + i // 251) % 256 for i in range(4096)))
    """)
    assert rc == 17
    store = BlobStore(tmp_path)
    digest = Digest.of(data)
    assert not store.has(digest)
    assert store.list() == []
    with pytest.raises(ModelNotFoundError):
        store.read(digest)
    assert store.usage().pending_bytes == 4096  # the orphaned temp file, outside blobs/
    assert store.gc(set()) == []
    assert store.usage().total_bytes == 0
    assert store.put(data) == digest


def test_failed_rename_in_process_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"abc")
    monkeypatch.undo()
    assert store.list() == []
    assert store.usage().total_bytes == 0


@pytest.mark.parametrize("offset", [0, 2047, 4999])
def test_flipped_byte_detected_and_quarantined(tmp_path: Path, offset: int) -> None:
    store = BlobStore(tmp_path)
    data = blob(5000)
    digest = store.put(data)
    flip_byte(store.path(digest), offset)
    with pytest.raises(IntegrityError):
        store.read(digest)
    assert not store.has(digest)  # quarantined, never returned
    assert store.usage().pending_bytes == 5000
    # A fresh copy heals it; gc clears the quarantine.
    store.put(data)
    assert store.read(digest) == data
    store.gc({digest})
    assert store.usage().pending_bytes == 0


def test_open_verified_detects_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(blob(3000))
    flip_byte(store.path(digest), 1500)
    with pytest.raises(IntegrityError):
        store.open_verified(digest)
    assert not store.has(digest)


def test_read_chunk_checks_the_chunk(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(2500)
    digest, pieces, chunks = layout(data)
    store.put(data)
    assert store.read_chunk(digest, 2048, len(pieces[2]), chunks[2]) == pieces[2]
    flip_byte(store.path(digest), 1030)
    assert store.read_chunk(digest, 0, CHUNK, chunks[0]) == pieces[0]  # untouched chunk
    for offset, length in ((-1, 10), (0, -1), (2048, 453), (2501, 0)):
        with pytest.raises(ValueError, match="outside"):  # a bad request, not a bad blob
            store.read_chunk(digest, offset, length, chunks[2])
    assert store.has(digest)
    with pytest.raises(IntegrityError):
        store.read_chunk(digest, CHUNK, CHUNK, chunks[1])
    assert not store.has(digest)


def test_chunked_write_commits(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(3 * CHUNK + 100)
    digest, pieces, chunks = layout(data)
    writer = store.begin(digest, len(data), chunks, CHUNK)
    assert (writer.next_index, writer.offset, writer.complete) == (0, 0, False)
    for i, piece in enumerate(pieces):
        assert not store.has(digest)  # nothing visible before commit
        writer.write_chunk(i, piece)
    assert writer.complete
    assert writer.offset == len(data)
    writer.commit()
    assert store.read(digest) == data
    assert store.usage().pending_bytes == 0  # partial and its record are gone


def test_resume_after_restart(tmp_path: Path) -> None:
    data = blob(5 * CHUNK + 1)
    digest, pieces, chunks = layout(data)
    first = BlobStore(tmp_path)
    with first.begin(digest, len(data), chunks, CHUNK) as writer:
        for i in range(3):
            writer.write_chunk(i, pieces[i])
    # A new process (a new store on the same root) continues after the last verified chunk.
    second = BlobStore(tmp_path)
    writer = second.begin(digest, len(data), chunks, CHUNK)
    assert writer.next_index == 3
    assert writer.offset == 3 * CHUNK
    for i in range(3, len(pieces)):
        writer.write_chunk(i, pieces[i])
    writer.commit()
    assert second.read(digest) == data


def test_resume_after_hard_kill(tmp_path: Path) -> None:
    data = blob(4 * CHUNK)
    digest, pieces, chunks = layout(data)
    rc = run_child(tmp_path, f"""
        data = bytes((i * 31 + i // 251) % 256 for i in range({len(data)}))
        pieces = [data[i:i + {CHUNK}] for i in range(0, len(data), {CHUNK})]
        chunks = [Digest.of(p) for p in pieces]
        writer = store.begin(Digest.of(data), len(data), chunks, {CHUNK})
        writer.write_chunk(0, pieces[0])
        writer.write_chunk(1, pieces[1])
        os._exit(9)
    """)
    assert rc == 9
    store = BlobStore(tmp_path)
    assert not store.has(digest)
    writer = store.begin(digest, len(data), chunks, CHUNK)
    assert writer.next_index == 2
    writer.write_chunk(2, pieces[2])
    writer.write_chunk(3, pieces[3])
    writer.commit()
    assert store.read(digest) == data


def test_crash_during_commit_rename_then_resume(tmp_path: Path) -> None:
    data = blob(2 * CHUNK)
    digest, _, chunks = layout(data)
    rc = run_child(tmp_path, f"""
        data = bytes((i * 31 + i // 251) % 256 for i in range({len(data)}))
        pieces = [data[i:i + {CHUNK}] for i in range(0, len(data), {CHUNK})]
        writer = store.begin(Digest.of(data), len(data), [Digest.of(p) for p in pieces], {CHUNK})
        for i, p in enumerate(pieces):
            writer.write_chunk(i, p)
        os.replace = lambda *a, **k: os._exit(17)
        writer.commit()
    """)
    assert rc == 17
    store = BlobStore(tmp_path)
    assert store.list() == []
    partial = tmp_path / "partial" / digest.hex
    assert stat.S_IMODE(partial.stat().st_mode) == 0o444  # made read-only just before the rename
    writer = store.begin(digest, len(data), chunks, CHUNK)
    assert stat.S_IMODE(partial.stat().st_mode) == 0o644  # so a non-root resume can open it
    assert writer.complete  # every chunk re-verified from the partial
    writer.commit()
    assert store.read(digest) == data


def test_resume_reverifies_partial(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(4 * CHUNK)
    digest, pieces, chunks = layout(data)
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        for i in range(3):
            writer.write_chunk(i, pieces[i])
    flip_byte(tmp_path / "partial" / digest.hex, CHUNK + 5)  # damage chunk 1 on disk
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        assert writer.next_index == 1
    assert (tmp_path / "partial" / digest.hex).stat().st_size == CHUNK


def test_resume_with_other_layout_starts_over(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(4 * CHUNK)
    digest, pieces, chunks = layout(data)
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        writer.write_chunk(0, pieces[0])
        writer.write_chunk(1, pieces[1])
    _, big_pieces, big_chunks = layout(data, 2 * CHUNK)
    writer = store.begin(digest, len(data), big_chunks, 2 * CHUNK)
    assert writer.next_index == 0
    writer.write_chunk(0, big_pieces[0])
    writer.write_chunk(1, big_pieces[1])
    writer.commit()
    assert store.read(digest) == data


def test_corrupt_record_starts_over(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(2 * CHUNK)
    digest, pieces, chunks = layout(data)
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        writer.write_chunk(0, pieces[0])
    (tmp_path / "partial" / f"{digest.hex}.json").write_text("{not json")
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        assert writer.next_index == 0
    record = json.loads((tmp_path / "partial" / f"{digest.hex}.json").read_text())
    assert record["verified"] == 0


def test_bad_chunks_refused_without_damage(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(3 * CHUNK + 10)
    digest, pieces, chunks = layout(data)
    writer = store.begin(digest, len(data), chunks, CHUNK)
    writer.write_chunk(0, pieces[0])
    partial = tmp_path / "partial" / digest.hex
    before = partial.read_bytes()
    bad = bytearray(pieces[1])
    bad[0] ^= 0xFF
    with pytest.raises(IntegrityError):
        writer.write_chunk(1, bytes(bad))  # wrong content
    with pytest.raises(IntegrityError):
        writer.write_chunk(1, pieces[1] + b"x")  # wrong size
    with pytest.raises(IntegrityError):
        writer.write_chunk(1, pieces[1][:-1])
    with pytest.raises(ValueError, match="out of order"):
        writer.write_chunk(2, pieces[2])
    with pytest.raises(ValueError, match="past the end"):
        writer.write_chunk(4, b"x")
    assert writer.next_index == 1
    assert partial.read_bytes() == before
    for i in range(1, 4):
        writer.write_chunk(i, pieces[i])
    with pytest.raises(ValueError, match="past the end"):
        writer.write_chunk(4, b"")
    writer.commit()
    assert store.read(digest) == data
    with pytest.raises(ClosedError, match="closed"):
        writer.write_chunk(0, pieces[0])


def test_commit_refuses_incomplete_and_wrong_whole_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(2 * CHUNK)
    digest, pieces, chunks = layout(data)
    with store.begin(digest, len(data), chunks, CHUNK) as writer:
        writer.write_chunk(0, pieces[0])
        with pytest.raises(ValueError, match="cannot commit"):
            writer.commit()
    # A chunk list that does not add up to the blob digest (a lying manifest).
    other = Digest.of(b"another blob")
    writer = store.begin(other, len(data), chunks, CHUNK)
    writer.write_chunk(0, pieces[0])
    writer.write_chunk(1, pieces[1])
    with pytest.raises(IntegrityError):
        writer.commit()
    assert not store.has(other)
    assert not (tmp_path / "partial" / other.hex).exists()


def test_a_false_verified_claim_never_publishes(tmp_path: Path) -> None:
    """`verified=True` skips the chunk hash, not the whole-blob check at commit."""
    store = BlobStore(tmp_path)
    data = blob(2 * CHUNK)
    digest, pieces, chunks = layout(data)
    bad = bytearray(pieces[1])
    bad[5] ^= 0xFF
    writer = store.begin(digest, len(data), chunks, CHUNK)
    writer.write_chunk(0, pieces[0], verified=True)
    writer.write_chunk(1, bytes(bad), verified=True)  # a caller that lied
    with pytest.raises(IntegrityError, match="partial discarded"):
        writer.commit()
    assert not store.has(digest)
    assert not (tmp_path / "partial" / digest.hex).exists()
    with store.begin(digest, len(data), chunks, CHUNK) as writer, \
            pytest.raises(IntegrityError):  # the length is still checked
        writer.write_chunk(0, pieces[0][:-1], verified=True)


def test_existing_blob_is_never_rewritten(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(2 * CHUNK)
    digest, _, chunks = layout(data)
    store.put(data)
    inode = store.path(digest).stat().st_ino
    writer = store.begin(digest, len(data), chunks, CHUNK)
    assert writer.complete
    with pytest.raises(ValueError, match="already stored"):
        writer.write_chunk(0, b"garbage")
    writer.commit()
    with pytest.raises(IntegrityError):
        store.put(b"garbage", expected=digest)
    assert store.path(digest).stat().st_ino == inode
    assert store.read(digest) == data


def test_begin_validates_layout_and_single_writer(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = blob(2 * CHUNK)
    digest, _, chunks = layout(data)
    with pytest.raises(ValueError, match="chunks"):
        store.begin(digest, len(data), chunks[:1], CHUNK)
    with pytest.raises(ValueError, match="bad layout"):
        store.begin(digest, -1, [], CHUNK)
    with pytest.raises(ValueError, match="bad layout"):
        store.begin(digest, len(data), chunks, 0)
    writer = store.begin(digest, len(data), chunks, CHUNK)
    with pytest.raises(ConflictError, match="open writer"):
        store.begin(digest, len(data), chunks, CHUNK)
    with pytest.raises(ConflictError, match="open writer"):
        store.delete(digest)
    writer.discard()
    assert not (tmp_path / "partial" / digest.hex).exists()
    store.begin(digest, len(data), chunks, CHUNK).close()


def test_empty_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = Digest(hashlib.sha256(b"").hexdigest())
    writer = store.begin(digest, 0, [], CHUNK)
    assert writer.complete
    writer.commit()
    assert store.read(digest) == b""


def test_gc_keeps_referenced_blobs_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    a, b, c = (store.put(blob(1000, seed)) for seed in (1, 2, 3))
    kept_data, dropped_data, open_data = blob(2 * CHUNK, 4), blob(2 * CHUNK, 5), blob(2 * CHUNK, 6)
    kept, kept_pieces, kept_chunks = layout(kept_data)
    dropped, dropped_pieces, dropped_chunks = layout(dropped_data)
    in_flight, flight_pieces, flight_chunks = layout(open_data)
    with store.begin(kept, len(kept_data), kept_chunks, CHUNK) as w:
        w.write_chunk(0, kept_pieces[0])
    with store.begin(dropped, len(dropped_data), dropped_chunks, CHUNK) as w:
        w.write_chunk(0, dropped_pieces[0])
    writer = store.begin(in_flight, len(open_data), flight_chunks, CHUNK)
    writer.write_chunk(0, flight_pieces[0])

    # The leftover partial of a blob that is stored (a commit interrupted after its rename).
    (tmp_path / "partial" / a.hex).write_bytes(b"stale")
    (tmp_path / "tmp" / "orphan").write_bytes(b"orphan")

    removed = store.gc({a, kept})

    assert set(removed) == {b, c, dropped}
    assert not (tmp_path / "partial" / a.hex).exists()
    assert not (tmp_path / "tmp" / "orphan").exists()
    assert store.list() == [a]
    assert store.read(a) == blob(1000, 1)
    with store.begin(kept, len(kept_data), kept_chunks, CHUNK) as w:
        assert w.next_index == 1  # the kept partial survived
    with store.begin(dropped, len(dropped_data), dropped_chunks, CHUNK) as w:
        assert w.next_index == 0
    writer.write_chunk(1, flight_pieces[1])  # the open writer was left alone
    writer.commit()
    assert store.read(in_flight) == open_data


def test_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"x" * 10)
    assert store.delete(digest) is True
    assert not store.has(digest)
    assert store.delete(digest) is False
