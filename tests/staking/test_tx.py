"""Transactions on the wire: one canonical encoding, domain-separated signatures, evidence."""

from __future__ import annotations

import struct

import pytest

from swarm.staking import (
    TX_DOMAIN,
    Ack,
    BadSignatureError,
    Bond,
    Claim,
    Deposit,
    Evidence,
    InvalidEvidenceError,
    Kind,
    MalformedTransactionError,
    Receipt,
    Tick,
    Transaction,
    Transfer,
    Unbond,
    WorkReport,
    decode_transaction,
    sign,
    sign_receipt,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, make_genesis

GENESIS = make_genesis()
CHAIN = GENESIS.chain
A, B, C = USERS[0], USERS[1], USERS[2]


def _bodies() -> list[object]:
    receipt = sign_receipt(CHAIN, B, A.peer_id, 70)
    return [Transfer(B.peer_id, 5), Bond(7), Unbond(3), Deposit(C.peer_id, 11), Claim(receipt)]


@pytest.mark.parametrize("body", _bodies(), ids=lambda b: type(b).__name__)
def test_every_kind_round_trips_through_the_wire(body: object) -> None:
    tx = Transaction(CHAIN, A.peer_id, 3, body, epoch=2,  # type: ignore[arg-type]
                     acks=(Ack(C.peer_id, 4), Ack(B.peer_id, 9)))
    stx = sign(tx, A)
    back = decode_transaction(stx.wire, CHAIN)
    assert back.tx == tx
    assert back.hash == stx.hash
    assert back.payload == stx.payload
    assert back.verified


def test_a_tick_round_trips_and_sorts_its_reports() -> None:
    reports = (WorkReport(B.peer_id, 10, 1), WorkReport(A.peer_id, 3, 0))
    stx = Wallet(TIMEKEEPER, CHAIN).make(Tick(reports), epoch=0)
    back = decode_transaction(stx.wire, CHAIN)
    assert back.tx.kind is Kind.TICK
    assert back.tx.body == Tick(tuple(reversed(reports))) == stx.tx.body


def test_ack_order_does_not_change_the_encoding() -> None:
    one = Transaction(CHAIN, A.peer_id, 1, Bond(1), acks=(Ack(B.peer_id, 1), Ack(C.peer_id, 2)))
    two = Transaction(CHAIN, A.peer_id, 1, Bond(1), acks=(Ack(C.peer_id, 2), Ack(B.peer_id, 1)))
    assert sign(one, A).payload == sign(two, A).payload


def test_a_flipped_bit_is_a_bad_signature() -> None:
    wire = bytearray(sign(Transaction(CHAIN, A.peer_id, 1, Transfer(B.peer_id, 5)), A).wire)
    wire[-100] ^= 1  # inside the signed payload (the recipient)
    with pytest.raises(BadSignatureError):
        decode_transaction(bytes(wire), CHAIN)


def test_signature_without_the_domain_tag_does_not_verify() -> None:
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Bond(1)), A)
    undomained = stx.payload + A.sign(stx.payload)
    with pytest.raises(BadSignatureError):
        decode_transaction(undomained, CHAIN)
    assert decode_transaction(stx.payload + A.sign(TX_DOMAIN + stx.payload), CHAIN).verified


def test_signed_by_someone_else_is_a_bad_signature() -> None:
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Bond(1)), A)
    forged = stx.payload + B.sign(TX_DOMAIN + stx.payload)
    with pytest.raises(BadSignatureError):
        decode_transaction(forged, CHAIN)


def test_a_forged_receipt_is_a_bad_signature() -> None:
    forged = Receipt(B.peer_id, A.peer_id, 70, A.sign(b"x"))  # payee signs for the payer
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Claim(forged)), A)
    with pytest.raises(BadSignatureError, match="receipt"):
        decode_transaction(stx.wire, CHAIN)


def test_a_receipt_for_another_chain_is_a_bad_signature() -> None:
    other = make_genesis(unbonding_epochs=9).chain
    receipt = sign_receipt(other, B, A.peer_id, 70)
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Claim(receipt)), A)
    with pytest.raises(BadSignatureError):
        decode_transaction(stx.wire, CHAIN)


def test_another_chain_is_malformed() -> None:
    other = make_genesis(unbonding_epochs=9).chain
    stx = sign(Transaction(other, A.peer_id, 1, Bond(1)), A)
    with pytest.raises(MalformedTransactionError, match="another chain"):
        decode_transaction(stx.wire, CHAIN)


@pytest.mark.parametrize("tx", [
    Transaction(CHAIN, A.peer_id, 0, Bond(1)),  # sequence numbers start at 1
    Transaction(CHAIN, A.peer_id, 1, Bond(0)),  # amounts are positive
    Transaction(CHAIN, A.peer_id, 1, Transfer(A.peer_id, 1)),  # to oneself
    Transaction(CHAIN, A.peer_id, 1, Bond(1), acks=(Ack(A.peer_id, 1),)),  # acks oneself
    Transaction(CHAIN, A.peer_id, 1, Bond(1), acks=(Ack(B.peer_id, 1), Ack(B.peer_id, 2))),
    Transaction(CHAIN, A.peer_id, 1, Bond(2**63)),  # beyond the amount range
    Transaction(CHAIN, TIMEKEEPER.peer_id, 3, Tick(()), epoch=1),  # a tick's epoch is seq - 1
    Transaction(CHAIN, A.peer_id, 1, Claim(Receipt(B.peer_id, C.peer_id, 5, b"s" * 64))),
], ids=["seq0", "zero", "self-transfer", "self-ack", "ack-twice", "huge", "tick-epoch",
        "claim-for-another"])
def test_out_of_range_fields_cannot_be_signed(tx: Transaction) -> None:
    signer = TIMEKEEPER if tx.sender == TIMEKEEPER.peer_id else A
    with pytest.raises(MalformedTransactionError):
        sign(tx, signer)


def test_non_canonical_bytes_are_refused() -> None:
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Bond(1)), A)
    with pytest.raises(MalformedTransactionError, match="trailing"):
        decode_transaction(stx.payload + b"\x00" + stx.signature, CHAIN)
    with pytest.raises(MalformedTransactionError):
        decode_transaction(stx.wire[:40], CHAIN)
    bad_kind = bytearray(stx.payload)
    bad_kind[4 + 32 + 32 + 16] = 99
    with pytest.raises(MalformedTransactionError, match="kind"):
        decode_transaction(bytes(bad_kind) + stx.signature, CHAIN)


def test_unsorted_acks_on_the_wire_are_refused() -> None:
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Bond(1),
                           acks=(Ack(B.peer_id, 1), Ack(C.peer_id, 1))), A)
    header = 4 + 32 + 32 + 8 + 8 + 1 + 2
    first, second = stx.payload[header:header + 40], stx.payload[header + 40:header + 80]
    swapped = stx.payload[:header] + second + first + stx.payload[header + 80:]
    assert struct.unpack(">H", swapped[header - 2:header]) == (2,)
    with pytest.raises(MalformedTransactionError, match="sorted"):
        decode_transaction(swapped + A.sign(TX_DOMAIN + swapped), CHAIN)


def test_decode_without_verification_is_marked_unverified() -> None:
    stx = sign(Transaction(CHAIN, A.peer_id, 1, Bond(1)), A)
    garbage = stx.payload + b"\x00" * 64
    assert not decode_transaction(garbage, CHAIN, verify=False).verified


def test_evidence_is_checkable_by_anyone_and_order_free() -> None:
    wallet = Wallet(A, CHAIN)
    one = wallet.make(Transfer(B.peer_id, 5), seq=4)
    two = wallet.make(Transfer(C.peer_id, 5), seq=4)
    evidence = Evidence(one, two)
    assert evidence == Evidence(two, one)
    assert evidence.slot == (A.peer_id, 4)
    back = Evidence.decode(evidence.wire, CHAIN)
    assert back == evidence


@pytest.mark.parametrize("case", ["same", "other-seq", "other-sender"])
def test_evidence_that_proves_nothing_is_refused(case: str) -> None:
    one = Wallet(A, CHAIN).make(Bond(1), seq=4)
    two = {"same": one,
           "other-seq": Wallet(A, CHAIN).make(Bond(2), seq=5),
           "other-sender": Wallet(B, CHAIN).make(Bond(2), seq=4)}[case]
    with pytest.raises(InvalidEvidenceError):
        Evidence(one, two).check()


def test_evidence_with_a_forged_transaction_is_refused() -> None:
    one = Wallet(A, CHAIN).make(Bond(1), seq=4)
    genuine = Wallet(A, CHAIN).make(Bond(2), seq=4)
    forged = genuine.payload + B.sign(TX_DOMAIN + genuine.payload)
    data = struct.pack(">H", len(one.wire)) + one.wire + forged
    with pytest.raises(BadSignatureError):
        Evidence.decode(data, CHAIN)
