"""Ledger errors, all under `LedgerError` (a SwarmError).

    LedgerError
    ├── RejectedError                 stateless: the transaction never enters any node's set
    │   ├── MalformedTransactionError bad encoding, out-of-range field, wrong network, a kind
    │   │                             its sender may not send
    │   ├── BadSignatureError         a transaction or receipt signature does not verify
    │   │                             (also an IntegrityError)
    │   └── InvalidEvidenceError      two transactions that do not prove an equivocation
    ├── NotReadyError                 what the transaction depends on is not applied yet (a Ledger
    │   │                             buffers it until it is)
    │   ├── SequenceGapError          the sender's previous sequence number is missing
    │   └── MissingDependencyError    an acknowledged credit or the declared epoch is missing
    ├── StaleSequenceError            the sender already used this sequence number
    ├── TransactionFailedError        valid and ready, but the state refuses it; a Ledger
    │   │                             records it as failed and its sequence number is used up
    │   ├── OverdraftError            spends more than the sender's spendable balance
    │   ├── InsufficientStakeError    unbonds more than is bonded
    │   └── ReceiptError              a claim that pays nothing
    │       ├── AlreadyClaimedError   the receipt's cumulative amount was already paid
    │       └── NoDepositError        the payer has no unpaid acknowledged deposit for the payee
    ├── BufferFullError               the out-of-order buffer is full (try again later)
    ├── LedgerCorruptError            a stored log or snapshot is inconsistent (also an
    │                                 IntegrityError)
    └── GenesisError                  a bad genesis file, or a store made for another genesis
                                      (also a ConfigError)

The split matters to a Ledger: a rejected transaction is forgotten (nobody can be held to
it), a failed one is recorded (it was validly signed, so it occupies its sequence number and
every node must agree it did).
"""

from __future__ import annotations

from swarm._errors import ConfigError, IntegrityError, SwarmError

__all__ = [
    "AlreadyClaimedError",
    "BadSignatureError",
    "BufferFullError",
    "GenesisError",
    "InsufficientStakeError",
    "InvalidEvidenceError",
    "LedgerCorruptError",
    "LedgerError",
    "MalformedTransactionError",
    "MissingDependencyError",
    "NoDepositError",
    "NotReadyError",
    "OverdraftError",
    "ReceiptError",
    "RejectedError",
    "SequenceGapError",
    "StaleSequenceError",
    "TransactionFailedError",
]


class LedgerError(SwarmError):
    """Root of the staking ledger's errors."""


class RejectedError(LedgerError):
    """The transaction is invalid on its own, whatever the state: it is dropped."""


class MalformedTransactionError(RejectedError):
    """Bad encoding, a field out of range, another network's chain id, or a kind the sender
    may not send (only the timekeeper ticks, and it only ticks)."""


class BadSignatureError(RejectedError, IntegrityError):
    """A transaction's or a receipt's Ed25519 signature does not verify."""


class InvalidEvidenceError(RejectedError):
    """The two transactions are not two different, validly signed ones from one account at
    one sequence number."""


class NotReadyError(LedgerError):
    """A dependency of the transaction has not been applied yet."""


class SequenceGapError(NotReadyError):
    """The sender's previous sequence number has not been applied yet."""


class MissingDependencyError(NotReadyError):
    """An acknowledged source has not reached the named sequence number, or the declared
    epoch has not started, in this state."""


class StaleSequenceError(LedgerError):
    """The sender's sequence number is already used (a duplicate, a replay or a conflict)."""


class TransactionFailedError(LedgerError):
    """The transaction is valid and ready but the state refuses it. A Ledger records it as
    failed: its sequence number is used up and it has no other effect."""


class OverdraftError(TransactionFailedError):
    """The amount exceeds the sender's spendable (acknowledged) balance."""


class InsufficientStakeError(TransactionFailedError):
    """The amount to unbond exceeds the sender's bonded stake."""


class ReceiptError(TransactionFailedError):
    """A claim that would pay nothing."""


class AlreadyClaimedError(ReceiptError):
    """The receipt's cumulative amount is not above what was already paid to the pair."""


class NoDepositError(ReceiptError):
    """Everything the payer deposited for this payee (and the payee acknowledged) is paid."""


class BufferFullError(LedgerError):
    """The out-of-order buffer (in all, or for this sender) is full."""


class LedgerCorruptError(LedgerError, IntegrityError):
    """A stored log or snapshot does not replay: the store is damaged or was edited."""


class GenesisError(LedgerError, ConfigError):
    """The genesis file is invalid, or a store holds a ledger of another genesis."""
