"""decode_wire: one entry point for every ledger item, dispatched on its leading magic."""

from __future__ import annotations

import pytest

from swarm.staking import (
    EVIDENCE_MAGIC,
    MAX_WIRE_BYTES,
    Evidence,
    Genesis,
    GenesisError,
    Ledger,
    MalformedTransactionError,
    Outcome,
    RejectedError,
    SignedTransaction,
    Transfer,
    decode_wire,
    wire_of,
)
from tests.staking import USERS, make_genesis, wallets

GENESIS = make_genesis({0: 1000, 1: 1000}, {0: 400})
B = USERS[1].peer_id


def test_transactions_and_evidence_round_trip_through_the_wire() -> None:
    w = wallets(GENESIS)
    one, other = w[0].make(Transfer(B, 1)), w[0].make(Transfer(B, 2), seq=1)
    assert isinstance(decode_wire(wire_of(one), GENESIS.chain), SignedTransaction)
    evidence = Evidence(one, other)
    wire = wire_of(evidence)
    assert wire.startswith(EVIDENCE_MAGIC)
    decoded = decode_wire(wire, GENESIS.chain)
    assert isinstance(decoded, Evidence)
    assert decoded.slot == evidence.slot
    ledger = Ledger(GENESIS)
    assert ledger.receive(wire) is Outcome.EQUIVOCATION
    assert ledger.state.account(USERS[0].peer_id).equivocations == 1


@pytest.mark.parametrize("junk", [b"", b"SWL", b"XXXX" + b"\0" * 200, b"SWE1",
                                  b"SWE1\xff\xff" + b"\0" * 100, b"SWL1" + b"\0" * 40])
def test_junk_is_rejected_with_a_clear_error(junk: bytes) -> None:
    with pytest.raises(RejectedError):
        decode_wire(junk, GENESIS.chain)
    with pytest.raises(RejectedError):
        Ledger(GENESIS).receive(junk)


def test_oversize_items_are_refused_before_parsing() -> None:
    with pytest.raises(MalformedTransactionError, match="exceeds"):
        decode_wire(b"SWL1" + b"\0" * MAX_WIRE_BYTES, GENESIS.chain)


def test_epoch_length_and_minimum_stake_are_part_of_the_chain_id() -> None:
    text = GENESIS.to_toml()
    assert "epoch_seconds = 60" in text
    assert "min_stake = 0" in text
    assert Genesis.from_toml(text).chain == GENESIS.chain
    changed = Genesis.from_toml(text.replace("min_stake = 0", "min_stake = 5"))
    assert changed.params.min_stake == 5
    assert changed.chain != GENESIS.chain
    with pytest.raises(GenesisError):
        Genesis.from_toml(text.replace("epoch_seconds = 60", "epoch_seconds = 0"))
