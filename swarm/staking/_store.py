"""LedgerStore: the ledger on disk, in SQLite (WAL mode).

Four tables: `meta` (the genesis it was made for), `log` (the append-only transaction log,
kept append-only by triggers), `snapshot` (the canonical state after the first `pos` log
entries) and `faults` (wrong-result evidence, which is no transaction: it slashes at a
point of the offender's chain, so a store that holds any replays from genesis and feeds it
again rather than trust a snapshot that may or may not include its slash). The store is a
TransactionLog, so a Ledger appends to it directly; reopening loads the snapshot and replays
the log after it, and `rebuild()` replays the whole log from genesis, which must give the
same state byte for byte.

Log entries were verified before they were appended, so replays read them without checking
signatures again (`verify=True` re-checks them, for a store of doubtful origin).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from swarm._errors import ClosedError
from swarm._types import PeerId
from swarm.staking._errors import GenesisError, LedgerCorruptError, LedgerError, RejectedError
from swarm.staking._fault import FaultEvidence
from swarm.staking._genesis import Genesis
from swarm.staking._ledger import Ledger, LedgerConfig, Slot, replay
from swarm.staking._state import State
from swarm.staking._tx import SignedTransaction, decode_transaction

__all__ = ["LedgerStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    pos INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    wire BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_slot ON log (sender, seq);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pos INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (
    hash BLOB PRIMARY KEY,
    wire BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS log_no_update BEFORE UPDATE ON log
    BEGIN SELECT RAISE(ABORT, 'the ledger log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS log_no_delete BEFORE DELETE ON log
    BEGIN SELECT RAISE(ABORT, 'the ledger log is append-only'); END;
"""


class LedgerStore:
    """SQLite persistence for one genesis' ledger; also its TransactionLog.

    Each append commits on its own unless inside `with store.batch():`. Use as a context
    manager, or call close().
    """

    def __init__(self, path: Path, genesis: Genesis, *, verify: bool = False) -> None:
        self._genesis = genesis
        self._verify = verify
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                path, isolation_level=None, check_same_thread=True)
            db = self._db
            db.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL syncs at checkpoints: a power cut may lose the latest
            # appends, never corrupt the log, and gossip brings lost transactions back.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis.canonical(),))
            elif bytes(row[0]) != genesis.canonical():
                raise GenesisError(f"{path} holds the ledger of another genesis")
            self._length: int = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger store {path}: {exc}") from exc

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError("ledger store is closed")
        return self._db

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Appends and snapshots inside commit together (much faster than one by one)."""
        db = self._conn
        db.execute("BEGIN")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            self._length = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
            raise
        db.execute("COMMIT")

    # TransactionLog

    def append(self, stx: SignedTransaction) -> None:
        sender, seq = stx.slot
        self._conn.execute("INSERT INTO log VALUES (?, ?, ?, ?, ?)",
                           (self._length, sender.value, seq, stx.hash, stx.wire))
        self._length += 1

    def __len__(self) -> int:
        return self._length

    def entries(self, start: int = 0) -> Iterator[SignedTransaction]:
        cursor = self._conn.execute("SELECT wire FROM log WHERE pos >= ? ORDER BY pos", (start,))
        for (wire,) in cursor:
            yield self._decode(wire)

    def find(self, sender: PeerId, seq: int) -> tuple[int, SignedTransaction] | None:
        row = self._conn.execute(
            "SELECT pos, wire FROM log WHERE sender = ? AND seq = ? ORDER BY pos LIMIT 1",
            (sender.value, seq)).fetchone()
        return None if row is None else (row[0], self._decode(row[1]))

    def void_slots(self) -> set[Slot]:
        rows = self._conn.execute(
            "SELECT sender, seq FROM log GROUP BY sender, seq HAVING COUNT(*) > 1")
        return {(PeerId(sender), seq) for sender, seq in rows}

    # Wrong-result evidence

    def append_fault(self, evidence: FaultEvidence) -> None:
        """Keep `evidence` (once: by its hash)."""
        self._conn.execute("INSERT OR IGNORE INTO faults VALUES (?, ?)",
                           (evidence.hash, evidence.wire))

    def fault_wires(self) -> list[bytes]:
        return [bytes(wire) for (wire,) in
                self._conn.execute("SELECT wire FROM faults ORDER BY hash")]

    # Snapshots and rebuilds

    def save_snapshot(self, state: State, pos: int | None = None) -> None:
        """Store `state` as the state after the first `pos` log entries (default: all)."""
        pos = self._length if pos is None else pos
        self._conn.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?)",
                           (pos, state.encode()))

    def snapshot(self) -> tuple[int, State] | None:
        """(pos, state after the first pos entries), or None when there is none or it is
        stale: an equivocation learnt after it voided a slot it had applied."""
        row = self._conn.execute("SELECT pos, state FROM snapshot WHERE id = 1").fetchone()
        if row is None:
            return None
        pos, data = row
        if pos > self._length:
            raise LedgerCorruptError(f"snapshot at {pos} is past the log's end ({self._length})")
        stale = self._conn.execute(
            "SELECT 1 FROM log GROUP BY sender, seq HAVING COUNT(*) > 1 AND MIN(pos) < ? "
            "AND MAX(pos) >= ? LIMIT 1", (pos, pos)).fetchone()
        if stale is not None:
            return None
        return pos, State.decode(bytes(data), self._genesis)

    def rebuild(self) -> State:
        """The state replayed from genesis over the whole log (ignores the snapshot)."""
        return replay(State.genesis(self._genesis), self.entries(), self.void_slots())

    def ledger(self, config: LedgerConfig | None = None) -> Ledger:
        """A Ledger that appends to this store, starting from the snapshot (when valid) plus
        the log after it, or, when the store holds wrong-result evidence, from genesis with
        the evidence fed again."""
        faults = self.fault_wires()
        ledger = Ledger(self._genesis, config, log=self,
                        snapshot=None if faults else self.snapshot())
        for wire in faults:
            # Refused now (its witnesses no longer eligible on the whole log) is possible:
            # the evidence was checked against the state when it arrived.
            with contextlib.suppress(RejectedError):
                ledger.receive(wire)
        ledger.take_faults()  # stored already
        return ledger

    def _decode(self, wire: bytes) -> SignedTransaction:
        try:
            return decode_transaction(bytes(wire), self._genesis.chain, verify=self._verify)
        except LedgerError as exc:
            raise LedgerCorruptError(f"bad entry in the ledger log: {exc}") from exc
