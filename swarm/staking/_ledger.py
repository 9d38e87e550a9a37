"""Ledger: the pure state machine fed by gossip, in whatever order gossip delivers.

A received transaction is verified, then buffered until it is ready (its sender's previous
sequence number, its epoch's tick and every acknowledged chain position are applied), then
settled (applied, or recorded as failed) and appended to the log. The log is the set of
transactions the state is a function of, in an order that is causal, so replaying it from
genesis gives the same state (`replay`).

Two different transactions at one slot (sender, sequence number) are an equivocation,
however they arrive:

- both still buffered: the slot is voided (the sender slashed) once the sender's previous
  slot is applied, and both go to the log there;
- one already applied or failed: the second goes to the log, and the state is replayed from
  the latest in-memory checkpoint before the first, with the slot voided. Whatever the first
  one paid out, and whatever was built on it, is undone there, and every transaction after
  it is judged again against the corrected past.

Either way the state is the one every node that holds the same transactions computes. The
Ledger keeps the evidence for gossip to spread (`take_evidence`), so that nodes that saw only
one of the two learn of the other.

Wrong-result evidence (_fault.FaultEvidence, wire bytes led by b"SWF1") is checked, its
witnesses must be eligible on this node (bonded at least `witness_min_bond`, no offence),
and it is held once per offence. Its slash is taken right after the offender's transaction
`after_seq` (see _apply, rule 5): at once when the offender stands there, when it gets
there, or by a replay from the latest checkpoint before it when it is past.
Known limits: variants of one offence's evidence with ever lower `after_seq` each force a
replay (at most the offender's chain length of them; variants at one point cost nothing).
And the witnesses' eligibility is an admission check against this node's state
when the evidence arrives, not part of the state function, so evidence that arrives while a
witness's stake or record changes (it unbonds, or is slashed itself) can be taken by one
node and refused by another. The fix is to judge witnesses, like the offender, at points
of their own chains that the evidence names.

Whatever a stranger can make a node hold is bounded: the buffer holds at most
`max_buffered` transactions, none further than `max_ahead` ahead of what it waits for.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from swarm._types import PeerId
from swarm.staking._apply import apply, check_sender, fault, settle, void, waiting_on
from swarm.staking._eligible import eligible
from swarm.staking._errors import (
    BufferFullError,
    InvalidEvidenceError,
    LedgerCorruptError,
    MalformedTransactionError,
    NotReadyError,
    RejectedError,
    StaleSequenceError,
)
from swarm.staking._fault import FAULT_MAGIC, FaultEvidence, FaultKey
from swarm.staking._genesis import Genesis
from swarm.staking._state import State
from swarm.staking._tx import Evidence, SignedTransaction, verify_signed
from swarm.staking._wire import decode_wire

__all__ = ["Ledger", "LedgerConfig", "MemoryLog", "Outcome", "TransactionLog", "replay"]

Slot = tuple[PeerId, int]


class Outcome(enum.Enum):
    """What `Ledger.receive` did with a transaction."""

    APPLIED = "applied"  # applied (maybe with others it unblocked)
    FAILED = "failed"  # the state refused it: recorded, its sequence number used up
    BUFFERED = "buffered"  # waits for what it depends on
    DUPLICATE = "duplicate"  # already held
    EQUIVOCATION = "equivocation"  # a second transaction at its slot: both void, sender slashed
    VOID = "void"  # its slot is already void
    FAULT = "fault"  # new wrong-result evidence: the offender slashed (or will be, at its point)


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    # Most transactions held while they wait for their dependencies.
    max_buffered: int = 65_536
    # Furthest a transaction may be ahead of what it waits for (a sequence number, an epoch,
    # an acknowledged chain position); further ones are refused, to be sent again later.
    max_ahead: int = 1024
    # Log entries between in-memory checkpoints; a late equivocation replays from one.
    checkpoint_interval: int = 4096
    # Checkpoints kept (older equivocations replay from the genesis or snapshot base).
    checkpoints: int = 8

    def __post_init__(self) -> None:
        if min(self.max_buffered, self.max_ahead, self.checkpoint_interval,
               self.checkpoints) < 1:
            raise ValueError("LedgerConfig values must be positive")


class TransactionLog(Protocol):
    """Append-only log of every transaction that used a slot (MemoryLog; LedgerStore)."""

    def append(self, stx: SignedTransaction) -> None: ...

    def __len__(self) -> int: ...

    def entries(self, start: int = 0) -> Iterator[SignedTransaction]:
        """Entries from position `start` (0-based) on, in log order."""
        ...

    def find(self, sender: PeerId, seq: int) -> tuple[int, SignedTransaction] | None:
        """The first entry at slot (sender, seq) and its position."""
        ...

    def void_slots(self) -> set[Slot]:
        """Slots logged twice: the equivocations."""
        ...


class MemoryLog:
    """A TransactionLog in memory (tests, simulation)."""

    def __init__(self) -> None:
        self._entries: list[SignedTransaction] = []
        self._first: dict[Slot, int] = {}
        self._void: set[Slot] = set()

    def append(self, stx: SignedTransaction) -> None:
        slot = stx.slot
        if slot in self._first:
            self._void.add(slot)
        else:
            self._first[slot] = len(self._entries)
        self._entries.append(stx)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, start: int = 0) -> Iterator[SignedTransaction]:
        for i in range(start, len(self._entries)):
            yield self._entries[i]

    def find(self, sender: PeerId, seq: int) -> tuple[int, SignedTransaction] | None:
        pos = self._first.get((sender, seq))
        return None if pos is None else (pos, self._entries[pos])

    def void_slots(self) -> set[Slot]:
        return set(self._void)


def replay(start: State, entries: Iterable[SignedTransaction], void_slots: set[Slot],
           faults: Mapping[Slot, int] | None = None) -> State:
    """The state after `entries` (a log suffix, in log order) starting from `start`.

    A slot in `void_slots` is voided where its first entry stands; its second entry, like
    any entry at a slot already used, is skipped. `faults` maps (offender, after_seq) to the
    number of wrong results slashed right after that slot (those at sequence 0 are the
    caller's to apply to a genesis start). Raises LedgerCorruptError when an entry is not
    applicable where it stands (the log was damaged or reordered).
    """
    state = start
    for stx in entries:
        sender, seq = stx.slot
        if seq <= state.account(sender).seq:
            continue
        try:
            if (sender, seq) in void_slots:
                state = void(state, sender, seq)
            else:
                state, _ = settle(state, stx)
        except (NotReadyError, RejectedError) as exc:
            raise LedgerCorruptError(f"log entry {sender.short}#{seq} out of order or "
                                     f"invalid: {exc}") from exc
        if faults:
            for _ in range(faults.get((sender, seq), 0)):
                state = fault(state, sender, seq)
    return state


class Ledger:
    """The ledger state fed by gossip: `receive` transactions and evidence in any order.

    `snapshot`, when given, is (n, state after the first n log entries); the rest of `log`
    is replayed on top of it. Not thread-safe: one owner feeds it.
    """

    def __init__(self, genesis: Genesis, config: LedgerConfig | None = None, *,
                 log: TransactionLog | None = None,
                 snapshot: tuple[int, State] | None = None) -> None:
        self._genesis = genesis
        self._config = config or LedgerConfig()
        self._log: TransactionLog = log if log is not None else MemoryLog()
        self._void: set[Slot] = self._log.void_slots()
        self._base: tuple[int, State] = snapshot or (0, State.genesis(genesis))
        self._checkpoints: deque[tuple[int, State]] = deque(maxlen=self._config.checkpoints)
        self._state = self._base[1]
        # One piece of wrong-result evidence per offence, and how many slashes stand after
        # each (offender, after_seq).
        self._faults: dict[FaultKey, FaultEvidence] = {}
        self._fault_points: Counter[Slot] = Counter()
        self._new_faults: list[FaultEvidence] = []
        self._replay_from_base(self._base)
        self._buffer: dict[Slot, SignedTransaction] = {}
        self._pending_void: dict[Slot, Evidence] = {}
        # (account, sequence number it must reach) -> slots to look at again then.
        self._waiting: dict[tuple[PeerId, int], list[Slot]] = {}
        self._evidence: list[Evidence] = []
        # The slot `receive` was given, and what became of it while it ran.
        self._target: Slot | None = None
        self._target_outcome = Outcome.BUFFERED
        self.counts: Counter[Outcome] = Counter()

    @property
    def state(self) -> State:
        return self._state

    @property
    def genesis(self) -> Genesis:
        return self._genesis

    @property
    def log(self) -> TransactionLog:
        return self._log

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._pending_void)

    @property
    def faults(self) -> list[FaultEvidence]:
        """The wrong-result evidence held, one per offence (to persist or serve on sync)."""
        return list(self._faults.values())

    def take_faults(self) -> list[FaultEvidence]:
        """Wrong-result evidence new since the last call, for gossip to spread."""
        found, self._new_faults = self._new_faults, []
        return found

    def take_evidence(self) -> list[Evidence]:
        """Equivocations found since the last call, for gossip to spread."""
        found, self._evidence = self._evidence, []
        return found

    def receive(self, item: bytes | SignedTransaction | Evidence | FaultEvidence) -> Outcome:
        """Take one transaction or piece of evidence: an object, or its wire bytes (any
        item swarm.staking._wire dispatches on by its leading magic: a transaction,
        equivocation Evidence, or FaultEvidence led by b"SWF1").

        Raises RejectedError subclasses for what is invalid on its own (bad encoding, bad
        signature, another chain, bad evidence, witnesses not eligible here) and
        BufferFullError when it cannot be held now; every other case is an Outcome.
        """
        if isinstance(item, bytes | bytearray | memoryview) and \
                bytes(item[:len(FAULT_MAGIC)]) == FAULT_MAGIC:
            item = FaultEvidence.decode(bytes(item), self._genesis.chain,
                                        self._genesis.params.slashing)
        if isinstance(item, FaultEvidence):
            return self._count(self._receive_fault(item))
        if isinstance(item, Evidence):
            item.check()
            check_sender(self._state, item.first.tx)
            first = self._receive(item.first)
            second = self._receive(item.second)
            found = Outcome.EQUIVOCATION in (first, second)
            return self._count(Outcome.EQUIVOCATION if found else Outcome.VOID)
        if isinstance(item, bytes | bytearray | memoryview):
            decoded = decode_wire(bytes(item), self._genesis.chain)
            if not isinstance(decoded, SignedTransaction | Evidence | FaultEvidence):
                raise MalformedTransactionError(
                    f"the ledger does not take {type(decoded).__name__} items")
            return self.receive(decoded)
        stx = verify_signed(item)
        check_sender(self._state, stx.tx)
        return self._count(self._receive(stx))

    def submit(self, stx: SignedTransaction) -> Outcome:
        """Our own transaction: like `receive`, but one that is not ready, or that the state
        would refuse, raises (NotReadyError, TransactionFailedError) and is not recorded, so
        its sequence number stays free; one whose number is taken raises StaleSequenceError
        instead of equivocating."""
        stx = verify_signed(stx)
        held = self._buffer.get(stx.slot)
        if (held is not None and held.hash != stx.hash) or stx.slot in self._void:
            # Another of ours holds this number already: sending this one would equivocate.
            raise StaleSequenceError(f"sequence {stx.tx.seq} is taken by another transaction")
        apply(self._state, stx)
        return self.receive(stx)

    def _receive_fault(self, evidence: FaultEvidence) -> Outcome:
        params = self._genesis.params
        if evidence.chain != self._genesis.chain:
            raise InvalidEvidenceError("evidence made for another chain (genesis)")
        evidence.check(params.slashing)
        offender = evidence.offender_peer
        if offender == params.timekeeper:
            raise InvalidEvidenceError("the timekeeper serves no requests")
        for witness in evidence.witnesses:
            if not eligible(self._state, witness.signer, params.slashing.witness_min_bond):
                raise InvalidEvidenceError(f"witness {witness.signer.short} is not eligible "
                                           "(too little stake, or an offence of its own)")
        known = self._faults.get(evidence.key)
        if known is not None and (known.after_seq, known.hash) <= \
                (evidence.after_seq, evidence.hash):
            return Outcome.DUPLICATE
        self._faults[evidence.key] = evidence
        self._new_faults.append(evidence)
        head = self._state.account(offender).seq
        if known is not None and known.after_seq == evidence.after_seq:
            return Outcome.DUPLICATE  # the same slash at the same point: nothing changes
        if known is not None:
            self._fault_points[(offender, known.after_seq)] -= 1
            if known.after_seq <= head:
                # The kept one (lower after_seq) is applied at or before the dropped one.
                self._fault_points[(offender, evidence.after_seq)] += 1
                self._replay_from(self._position_of(offender, evidence.after_seq))
                return Outcome.FAULT
        self._fault_points[(offender, evidence.after_seq)] += 1
        if evidence.after_seq == head:
            # Checkpoints (and a snapshot base) past the fault's point were taken without
            # it: a later replay must start before that point.
            self._forget_after(self._position_of(offender, head))
            self._state = fault(self._state, offender, head)
        elif evidence.after_seq < head:
            self._replay_from(self._position_of(offender, evidence.after_seq))
        return Outcome.FAULT

    def _forget_after(self, position: int) -> None:
        while self._checkpoints and self._checkpoints[-1][0] > position:
            self._checkpoints.pop()
        if self._base[0] > position:
            self._base = (0, State.genesis(self._genesis))

    def _position_of(self, sender: PeerId, seq: int) -> int:
        """Log position of slot (sender, seq); 0 for seq 0 (the start)."""
        if seq == 0:
            return 0
        found = self._log.find(sender, seq)
        if found is None:
            raise LedgerCorruptError(f"slot {sender.short}#{seq} is used but not logged")
        return found[0]

    def _apply_faults(self, slot: Slot) -> None:
        for _ in range(self._fault_points.get(slot, 0)):
            self._state = fault(self._state, *slot)

    def _count(self, outcome: Outcome) -> Outcome:
        self.counts[outcome] += 1
        return outcome

    def _receive(self, stx: SignedTransaction) -> Outcome:
        slot = stx.slot
        sender, seq = slot
        if slot in self._void:
            return Outcome.VOID
        head = self._state.account(sender).seq
        if seq <= head:
            found = self._log.find(sender, seq)
            if found is None:
                raise LedgerCorruptError(f"slot {sender.short}#{seq} is used but not logged")
            position, known = found
            if known.hash == stx.hash:
                return Outcome.DUPLICATE
            self._void.add(slot)
            self._evidence.append(Evidence(known, stx))
            self._log.append(stx)
            self._replay_from(position)
            return Outcome.EQUIVOCATION
        held = self._buffer.get(slot)
        if held is not None:
            if held.hash == stx.hash:
                return Outcome.DUPLICATE
            del self._buffer[slot]
            evidence = Evidence(held, stx)
            self._void.add(slot)
            self._evidence.append(evidence)
            self._pending_void[slot] = evidence
            self._run([slot])
            return Outcome.EQUIVOCATION
        self._admit(stx)
        self._buffer[slot] = stx
        self._target, self._target_outcome = slot, Outcome.BUFFERED
        try:
            self._run([slot])
        finally:
            self._target = None
        return self._target_outcome

    def _admit(self, stx: SignedTransaction) -> None:
        if len(self._buffer) + len(self._pending_void) >= self._config.max_buffered:
            raise BufferFullError(f"{self._config.max_buffered} transactions already buffered")
        tx, state, limit = stx.tx, self._state, self._config.max_ahead
        needs = [(tx.sender, tx.seq - 1), (state.params.timekeeper, tx.epoch)]
        needs += [(a.source, a.seq) for a in tx.acks]
        for who, seq in needs:
            if seq - state.account(who).seq > limit:
                raise BufferFullError(f"transaction {tx.sender.short}#{tx.seq} waits for "
                                      f"{who.short}#{seq}, more than {limit} ahead")

    def _run(self, slots: Iterable[Slot]) -> None:
        """Settle every slot in `slots` that is ready, and what each one unblocks."""
        queue = deque(slots)
        while queue:
            slot = queue.popleft()
            sender, seq = slot
            evidence = self._pending_void.get(slot)
            if evidence is not None:
                if self._state.account(sender).seq != seq - 1:
                    self._waiting.setdefault((sender, seq - 1), []).append(slot)
                    continue
                del self._pending_void[slot]
                self._state = void(self._state, sender, seq)
                self._apply_faults(slot)  # before logging: a checkpoint includes them
                self._append(evidence.first)
                self._append(evidence.second)
            else:
                stx = self._buffer.get(slot)
                if stx is None:
                    continue  # voided or settled since it was queued
                blocker = waiting_on(self._state, stx.tx)
                if blocker is not None:
                    self._waiting.setdefault(blocker, []).append(slot)
                    continue
                del self._buffer[slot]
                self._state, failure = settle(self._state, stx)
                self._apply_faults(slot)  # before logging: a checkpoint includes them
                self._append(stx)
                if slot == self._target:
                    self._target_outcome = Outcome.APPLIED if failure is None else Outcome.FAILED
            queue.extend(self._waiting.pop(slot, ()))

    def _append(self, stx: SignedTransaction) -> None:
        self._log.append(stx)
        length = len(self._log)
        if length % self._config.checkpoint_interval == 0:
            self._checkpoints.append((length, self._state))

    def _replay_from(self, position: int) -> None:
        """Recompute the state from the latest checkpoint at or before log `position`."""
        self._forget_after(position)
        base = self._base
        if self._checkpoints and self._checkpoints[-1][0] >= base[0]:
            base = self._checkpoints[-1]
        self._replay_from_base(base)

    def _replay_from_base(self, base: tuple[int, State]) -> None:
        length, state = base
        if length == 0:
            # From the genesis: slashes taken before an offender's first transaction.
            state = State.genesis(self._genesis)
            for (offender, seq), count in self._fault_points.items():
                for _ in range(count if seq == 0 else 0):
                    state = fault(state, offender, 0)
        interval = self._config.checkpoint_interval
        for stx in self._log.entries(length):
            state = replay(state, (stx,), self._void, self._fault_points)
            length += 1
            if length % interval == 0:
                self._checkpoints.append((length, state))
        self._state = state
