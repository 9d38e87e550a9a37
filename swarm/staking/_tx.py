"""Ledger transactions, receipts and equivocation evidence: types, canonical wire form, signing.

Wire form of a transaction: `payload || signature`, where the payload is a fixed-layout
big-endian encoding (below) with exactly one byte string per transaction, and the
signature is Ed25519 over `TX_DOMAIN || payload` by the sender's key. The domain tag keeps a
ledger signature from being valid as an advert, tag or receipt signature, and the chain id
inside the payload keeps it from being valid on another network. A transaction's hash is
SHA-256 of its payload: two byte-different payloads from one account at one sequence number
are an equivocation (the evidence anyone can check); the same payload with another signature
is the same transaction.

    payload  := "SWL1" chain[32] sender[32] seq:u64 epoch:u64 kind:u8 n:u16 ack*n body
    ack      := source[32] seq:u64                  (sorted by source key, no duplicates)
    body     := TRANSFER to[32] amount:u64 | BOND amount:u64 | UNBOND amount:u64
              | DEPOSIT payee[32] amount:u64
              | CLAIM payer[32] cumulative:u64 receipt_signature[64]   (payee = sender)
              | TICK n:u16 (worker[32] served:u64 failed:u64)*n      (sorted by worker key)

Keys are raw 32-byte Ed25519 public keys; the Python types carry PeerIds, which inline them.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from swarm._errors import InvalidReferenceError
from swarm._types import PeerId
from swarm.protocol import Identity, peer_id_of, public_key_of_peer, verify
from swarm.staking._errors import (
    BadSignatureError,
    InvalidEvidenceError,
    MalformedTransactionError,
)

__all__ = [
    "MAX_ACKS",
    "MAX_REPORTS",
    "RECEIPT_DOMAIN",
    "TX_DOMAIN",
    "Ack",
    "Body",
    "Bond",
    "Claim",
    "Deposit",
    "Evidence",
    "Kind",
    "Receipt",
    "SignedTransaction",
    "Tick",
    "Transaction",
    "Transfer",
    "Unbond",
    "WorkReport",
    "decode_transaction",
    "sign",
    "sign_receipt",
]

TX_DOMAIN = b"swarm/ledger/tx/v1\x00"
RECEIPT_DOMAIN = b"swarm/ledger/receipt/v1\x00"
# Bounds on what one transaction can make every node store and compute.
MAX_ACKS = 64
MAX_REPORTS = 1024

_MAGIC = b"SWL1"
_U63 = (1 << 63) - 1  # amounts, sequence numbers and epochs stay below 2**63
_HEADER = struct.Struct(">4s32s32sQQBH")
_ACK = struct.Struct(">32sQ")
_TO_AMOUNT = struct.Struct(">32sQ")
_AMOUNT = struct.Struct(">Q")
_CLAIM = struct.Struct(">32sQ64s")
_COUNT = struct.Struct(">H")
_REPORT = struct.Struct(">32sQQ")
_RECEIPT = struct.Struct(">32s32s32sQ")
_SIG = 64


class Kind(enum.IntEnum):
    TRANSFER = 1
    BOND = 2
    UNBOND = 3
    DEPOSIT = 4
    CLAIM = 5
    TICK = 6


@functools.lru_cache(maxsize=1 << 16)
def key_of(peer: PeerId) -> bytes:
    """The raw Ed25519 key a peer id inlines (MalformedTransactionError if none)."""
    try:
        return public_key_of_peer(peer)
    except (InvalidReferenceError, ValueError) as exc:
        raise MalformedTransactionError(f"{peer} does not inline an Ed25519 key") from exc


@functools.lru_cache(maxsize=1 << 16)
def peer_of(key: bytes) -> PeerId:
    return peer_id_of(key)


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledges the credits `source`'s transactions up to `seq` made to the sender.

    Credits become spendable only when acknowledged: a transaction's validity then depends
    on nothing but its causal past (the sender's own chain and what it acknowledges), so
    every node decides it the same way whatever else it has received.
    """

    source: PeerId
    seq: int


@dataclass(frozen=True, slots=True)
class Transfer:
    to: PeerId
    amount: int


@dataclass(frozen=True, slots=True)
class Bond:
    amount: int


@dataclass(frozen=True, slots=True)
class Unbond:
    amount: int


@dataclass(frozen=True, slots=True)
class Deposit:
    """Locks `amount` of the sender's balance for `payee`'s claims (no refund yet: payment
    channels with a close and a dispute window come later)."""

    payee: PeerId
    amount: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """`payer` owes `payee` a running total of `cumulative`, signed by the payer."""

    payer: PeerId
    payee: PeerId
    cumulative: int
    signature: bytes = b""

    def message(self, chain: bytes) -> bytes:
        """The bytes the payer signs."""
        return RECEIPT_DOMAIN + _RECEIPT.pack(chain, key_of(self.payer), key_of(self.payee),
                                              self.cumulative)


@dataclass(frozen=True, slots=True)
class Claim:
    """The payee (the claim's sender) collects what `receipt` adds to what it was paid."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class WorkReport:
    """A worker's served and failed requests in the epoch a tick closes."""

    worker: PeerId
    served: int
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Tick:
    """The timekeeper starts epoch `seq` (its own sequence number) and reports the work of
    the epoch it closes; rewards are minted from the reports."""

    reports: tuple[WorkReport, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "reports",
                           tuple(sorted(self.reports, key=lambda r: key_of(r.worker))))


Body = Transfer | Bond | Unbond | Deposit | Claim | Tick

_KIND_OF: dict[type, Kind] = {Transfer: Kind.TRANSFER, Bond: Kind.BOND, Unbond: Kind.UNBOND,
                              Deposit: Kind.DEPOSIT, Claim: Kind.CLAIM, Tick: Kind.TICK}


@dataclass(frozen=True, slots=True)
class Transaction:
    """One account's signed step. `seq` numbers the sender's transactions 1, 2, 3, ...; a
    transaction waits for the sender's `seq - 1`, for epoch `epoch` to have started, and for
    every acknowledged source to reach the acknowledged sequence number."""

    chain: bytes
    sender: PeerId
    seq: int
    body: Body
    epoch: int = 0
    acks: tuple[Ack, ...] = ()

    def __post_init__(self) -> None:
        # One order for the acks, so one transaction has one encoding.
        object.__setattr__(self, "acks", tuple(sorted(self.acks, key=lambda a: key_of(a.source))))

    @property
    def kind(self) -> Kind:
        return _KIND_OF[type(self.body)]


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A transaction with its exact signed bytes. `verified` is False only for one decoded
    with `verify=False` (benchmarks, replaying a trusted local log)."""

    tx: Transaction
    payload: bytes
    signature: bytes
    # SHA-256 of the payload: the transaction's identity.
    hash: bytes
    verified: bool = True

    @property
    def wire(self) -> bytes:
        return self.payload + self.signature

    @property
    def slot(self) -> tuple[PeerId, int]:
        return self.tx.sender, self.tx.seq


def encode(tx: Transaction) -> bytes:
    """The canonical payload of `tx` (MalformedTransactionError if a field is out of range)."""
    _check(tx)
    parts = [_HEADER.pack(_MAGIC, tx.chain, key_of(tx.sender), tx.seq, tx.epoch, tx.kind,
                          len(tx.acks))]
    parts += [_ACK.pack(key_of(a.source), a.seq) for a in tx.acks]
    body = tx.body
    if isinstance(body, Transfer):
        parts.append(_TO_AMOUNT.pack(key_of(body.to), body.amount))
    elif isinstance(body, Bond | Unbond):
        parts.append(_AMOUNT.pack(body.amount))
    elif isinstance(body, Deposit):
        parts.append(_TO_AMOUNT.pack(key_of(body.payee), body.amount))
    elif isinstance(body, Claim):
        r = body.receipt
        parts.append(_CLAIM.pack(key_of(r.payer), r.cumulative, r.signature))
    else:
        parts.append(_COUNT.pack(len(body.reports)))
        parts += [_REPORT.pack(key_of(r.worker), r.served, r.failed) for r in body.reports]
    return b"".join(parts)


def sign(tx: Transaction, identity: Identity) -> SignedTransaction:
    """Encode and sign `tx` with the sender's identity."""
    if identity.public_key != key_of(tx.sender):
        raise ValueError("a transaction is signed by its sender")
    payload = encode(tx)
    return SignedTransaction(tx, payload, identity.sign(TX_DOMAIN + payload),
                             hashlib.sha256(payload).digest())


def sign_receipt(chain: bytes, payer: Identity, payee: PeerId, cumulative: int) -> Receipt:
    """A receipt: `payer` owes `payee` `cumulative` in all (running total, not a delta)."""
    unsigned = Receipt(payer.peer_id, payee, cumulative)
    _check_amount(cumulative, "receipt cumulative amount")
    return Receipt(payer.peer_id, payee, cumulative, payer.sign(unsigned.message(chain)))


def decode_transaction(data: bytes, chain: bytes, *, verify: bool = True) -> SignedTransaction:
    """Parse (strictly: only the canonical encoding is accepted) and, unless `verify` is
    False, check the transaction's and any receipt's signature.

    Raises MalformedTransactionError (bad bytes, another chain) or BadSignatureError.
    """
    if len(data) < _HEADER.size + _SIG:
        raise MalformedTransactionError(f"transaction of {len(data)} bytes is too short")
    payload, signature = bytes(data[:-_SIG]), bytes(data[-_SIG:])
    magic, tx_chain, sender_key, seq, epoch, kind_byte, n_acks = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise MalformedTransactionError("not a ledger transaction (bad magic)")
    if tx_chain != chain:
        raise MalformedTransactionError("transaction made for another chain (genesis)")
    try:
        kind = Kind(kind_byte)
    except ValueError as exc:
        raise MalformedTransactionError(f"unknown transaction kind {kind_byte}") from exc
    sender = peer_of(sender_key)
    offset = _HEADER.size
    if n_acks > MAX_ACKS:
        raise MalformedTransactionError(f"{n_acks} acks exceed {MAX_ACKS}")
    acks = []
    previous = b""
    for _ in range(n_acks):
        source_key, ack_seq = _unpack(_ACK, payload, offset)
        offset += _ACK.size
        if source_key <= previous:
            raise MalformedTransactionError("acks not sorted by source, or repeated")
        previous = source_key
        acks.append(Ack(peer_of(source_key), ack_seq))
    body: Body
    if kind is Kind.TRANSFER or kind is Kind.DEPOSIT:
        to_key, amount = _unpack(_TO_AMOUNT, payload, offset)
        offset += _TO_AMOUNT.size
        to = peer_of(to_key)
        body = Transfer(to, amount) if kind is Kind.TRANSFER else Deposit(to, amount)
    elif kind is Kind.BOND or kind is Kind.UNBOND:
        (amount,) = _unpack(_AMOUNT, payload, offset)
        offset += _AMOUNT.size
        body = Bond(amount) if kind is Kind.BOND else Unbond(amount)
    elif kind is Kind.CLAIM:
        payer_key, cumulative, receipt_sig = _unpack(_CLAIM, payload, offset)
        offset += _CLAIM.size
        body = Claim(Receipt(peer_of(payer_key), sender, cumulative, receipt_sig))
    else:
        (count,) = _unpack(_COUNT, payload, offset)
        offset += _COUNT.size
        if count > MAX_REPORTS:
            raise MalformedTransactionError(f"{count} work reports exceed {MAX_REPORTS}")
        reports = []
        previous = b""
        for _ in range(count):
            worker_key, served, failed = _unpack(_REPORT, payload, offset)
            offset += _REPORT.size
            if worker_key <= previous:
                raise MalformedTransactionError("work reports not sorted by worker, or repeated")
            previous = worker_key
            reports.append(WorkReport(peer_of(worker_key), served, failed))
        body = Tick(tuple(reports))
    if offset != len(payload):
        raise MalformedTransactionError(f"{len(payload) - offset} trailing bytes")
    tx = Transaction(chain, sender, seq, body, epoch, tuple(acks))
    _check(tx)
    if verify:
        if not _verify(sender_key, signature, TX_DOMAIN + payload):
            raise BadSignatureError(f"bad signature on transaction {sender.short}#{seq}")
        if isinstance(body, Claim):
            check_receipt(chain, body.receipt)
    return SignedTransaction(tx, payload, signature, hashlib.sha256(payload).digest(), verify)


def check_receipt(chain: bytes, receipt: Receipt) -> None:
    """Raise BadSignatureError unless the payer signed the receipt."""
    if not _verify(key_of(receipt.payer), receipt.signature, receipt.message(chain)):
        raise BadSignatureError(f"bad receipt signature from {receipt.payer.short}")


def verify_signed(stx: SignedTransaction) -> SignedTransaction:
    """`stx` with its signatures checked (itself when already verified)."""
    if stx.verified:
        return stx
    return decode_transaction(stx.wire, stx.tx.chain, verify=True)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two different transactions signed by one account for one sequence number: proof of
    equivocation that anyone can check with the account's public key alone. `first` is the
    one with the lower hash, so every node builds the same evidence."""

    first: SignedTransaction
    second: SignedTransaction

    def __post_init__(self) -> None:
        if self.first.hash > self.second.hash:
            first, second = self.second, self.first
            object.__setattr__(self, "first", first)
            object.__setattr__(self, "second", second)

    @property
    def slot(self) -> tuple[PeerId, int]:
        return self.first.slot

    @property
    def wire(self) -> bytes:
        a, b = self.first.wire, self.second.wire
        return _COUNT.pack(len(a)) + a + b

    @classmethod
    def decode(cls, data: bytes, chain: bytes) -> Evidence:
        """Parse and verify (InvalidEvidenceError, or the transactions' own errors)."""
        if len(data) < _COUNT.size:
            raise InvalidEvidenceError("evidence too short")
        (n,) = _COUNT.unpack_from(data)
        a = decode_transaction(data[_COUNT.size:_COUNT.size + n], chain)
        b = decode_transaction(data[_COUNT.size + n:], chain)
        evidence = cls(a, b)
        evidence.check()
        return evidence

    def check(self) -> None:
        """Raise InvalidEvidenceError unless this proves an equivocation."""
        if self.first.slot != self.second.slot:
            raise InvalidEvidenceError("the transactions are from different accounts or slots")
        if self.first.hash == self.second.hash:
            raise InvalidEvidenceError("the two transactions are the same")
        if self.first.tx.chain != self.second.tx.chain:
            raise InvalidEvidenceError("the transactions are from different chains")
        verify_signed(self.first)
        verify_signed(self.second)


def _verify(key: bytes, signature: bytes, message: bytes) -> bool:
    return verify(key, signature, message)


def _unpack(s: struct.Struct, payload: bytes, offset: int) -> tuple[Any, ...]:
    if offset + s.size > len(payload):
        raise MalformedTransactionError("transaction truncated")
    return s.unpack_from(payload, offset)


def _check_amount(value: int, what: str) -> None:
    if isinstance(value, bool) or not 1 <= value <= _U63:
        raise MalformedTransactionError(f"{what} must be in [1, 2**63 - 1], got {value}")


def _check(tx: Transaction) -> None:
    """Stateless field checks shared by encode and decode."""
    if len(tx.chain) != 32:
        raise MalformedTransactionError("chain id must be 32 bytes")
    if not 1 <= tx.seq <= _U63 or not 0 <= tx.epoch <= _U63:
        raise MalformedTransactionError(f"sequence {tx.seq} or epoch {tx.epoch} out of range")
    if len(tx.acks) > MAX_ACKS:
        raise MalformedTransactionError(f"{len(tx.acks)} acks exceed {MAX_ACKS}")
    sources = [a.source for a in tx.acks]
    if len(set(sources)) != len(sources) or tx.sender in sources:
        raise MalformedTransactionError("acks name a source twice, or the sender itself")
    for a in tx.acks:
        if not 1 <= a.seq <= _U63:
            raise MalformedTransactionError(f"ack sequence {a.seq} out of range")
    body = tx.body
    if isinstance(body, Transfer | Deposit):
        _check_amount(body.amount, "amount")
        target = body.to if isinstance(body, Transfer) else body.payee
        if target == tx.sender:
            raise MalformedTransactionError("a transfer or deposit to oneself")
    elif isinstance(body, Bond | Unbond):
        _check_amount(body.amount, "amount")
    elif isinstance(body, Claim):
        r = body.receipt
        if r.payee != tx.sender or r.payer == tx.sender:
            raise MalformedTransactionError("a claim is sent by the receipt's payee, "
                                            "for a receipt from someone else")
        _check_amount(r.cumulative, "receipt cumulative amount")
        if len(r.signature) != _SIG:
            raise MalformedTransactionError("receipt signature must be 64 bytes")
    else:
        if len(body.reports) > MAX_REPORTS:
            raise MalformedTransactionError(f"{len(body.reports)} reports exceed {MAX_REPORTS}")
        workers = [r.worker for r in body.reports]
        if len(set(workers)) != len(workers):
            raise MalformedTransactionError("a tick reports a worker twice")
        for report in body.reports:
            if not 0 <= report.served <= _U63 or not 0 <= report.failed <= _U63:
                raise MalformedTransactionError("work report counts out of range")
        if tx.epoch != tx.seq - 1:
            raise MalformedTransactionError("a tick's epoch is the one it closes (its seq - 1)")
