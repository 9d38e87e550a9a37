"""Ledger: buffering until ready, duplicates, equivocations early and late, bounds."""

from __future__ import annotations

import pytest

from swarm.staking import (
    TX_DOMAIN,
    BadSignatureError,
    Bond,
    BufferFullError,
    Evidence,
    Ledger,
    LedgerConfig,
    MalformedTransactionError,
    Outcome,
    OverdraftError,
    SequenceGapError,
    SignedTransaction,
    StaleSequenceError,
    State,
    Tick,
    Transfer,
    Unbond,
    WorkReport,
    replay,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, check_invariants, make_genesis, tick, wallets

GENESIS = make_genesis({0: 1000, 1: 1000, 2: 0}, {0: 400}, slash_ppm=500_000)
A, B, C = (USERS[i].peer_id for i in range(3))


@pytest.fixture
def w() -> list[Wallet]:
    return wallets(GENESIS)


def feed(ledger: Ledger, *txs: SignedTransaction) -> list[Outcome]:
    outcomes = [ledger.receive(stx) for stx in txs]
    check_invariants(ledger.state)
    return outcomes


def full_replay(ledger: Ledger) -> State:
    return replay(State.genesis(GENESIS), ledger.log.entries(), ledger.log.void_slots())


def test_out_of_order_is_buffered_then_applied(w: list[Wallet]) -> None:
    one, two = w[0].make(Transfer(B, 10)), w[0].make(Transfer(B, 20))
    ledger = Ledger(GENESIS)
    assert feed(ledger, two) == [Outcome.BUFFERED]
    assert ledger.buffered == 1
    assert feed(ledger, one) == [Outcome.APPLIED]
    assert ledger.buffered == 0
    assert ledger.state.account(A).seq == 2
    assert ledger.state.account(A).balance == 970
    assert [e.hash for e in ledger.log.entries()] == [one.hash, two.hash]


def test_a_spend_waits_for_the_credit_it_acknowledges(w: list[Wallet]) -> None:
    pay = w[0].make(Transfer(C, 300))
    spend = w[2].make(Transfer(B, 300), acks=[(A, 1)])
    ledger = Ledger(GENESIS)
    assert feed(ledger, spend, pay) == [Outcome.BUFFERED, Outcome.APPLIED]
    assert ledger.state.account(C).seq == 1
    assert ledger.state.account(C).balance == 0
    assert ledger.state.pending[(C, B)][1].amount == 300


def test_a_transaction_waits_for_its_epoch(w: list[Wallet]) -> None:
    tk = Wallet(TIMEKEEPER, GENESIS.chain)
    late = w[0].make(Bond(1), epoch=2)
    ledger = Ledger(GENESIS)
    assert feed(ledger, late, tick(tk)) == [Outcome.BUFFERED, Outcome.APPLIED]
    assert ledger.buffered == 1
    feed(ledger, tick(tk))
    assert ledger.buffered == 0
    assert ledger.state.account(A).epoch == 2


def test_duplicates_change_nothing(w: list[Wallet]) -> None:
    one, two = w[0].make(Bond(1)), w[0].make(Bond(2))
    ledger = Ledger(GENESIS)
    feed(ledger, two)
    assert feed(ledger, two) == [Outcome.DUPLICATE]  # while buffered
    feed(ledger, one)
    before = ledger.state
    assert feed(ledger, one, two, one.wire) == [Outcome.DUPLICATE] * 3  # once applied
    assert ledger.state == before
    assert len(ledger.log) == 2


def test_rejected_transactions_are_not_recorded(w: list[Wallet]) -> None:
    stx = w[0].make(Bond(1))
    ledger = Ledger(GENESIS)
    with pytest.raises(BadSignatureError):
        ledger.receive(stx.payload + USERS[1].sign(TX_DOMAIN + stx.payload))
    other = make_genesis({0: 5})
    with pytest.raises(MalformedTransactionError):
        ledger.receive(Wallet(USERS[0], other.chain).make(Bond(1)).wire)
    assert len(ledger.log) == 0
    assert ledger.state.account(A).seq == 0
    assert ledger.receive(stx.wire) is Outcome.APPLIED


def test_submit_refuses_without_using_the_number_receive_records(w: list[Wallet]) -> None:
    ledger = Ledger(GENESIS)
    too_much = w[0].make(Transfer(B, 5000))
    with pytest.raises(OverdraftError):
        ledger.submit(too_much)
    with pytest.raises(SequenceGapError):
        ledger.submit(w[0].make(Bond(1)))
    assert ledger.state.account(A).seq == 0
    assert len(ledger.log) == 0
    # From gossip, the same signed transaction is a failure every node records.
    assert ledger.receive(too_much) is Outcome.FAILED
    assert ledger.state.account(A).seq == 1
    assert ledger.state.account(A).balance == 1000
    assert ledger.submit(w[0].make(Transfer(B, 1), seq=2)) is Outcome.APPLIED


def test_submit_never_equivocates_for_us(w: list[Wallet]) -> None:
    ledger = Ledger(GENESIS)
    assert ledger.submit(w[0].make(Bond(1))) is Outcome.APPLIED
    with pytest.raises(StaleSequenceError):  # seq 1 is used
        ledger.submit(w[0].make(Bond(2), seq=1))
    assert ledger.receive(w[0].make(Bond(1), acks=[(B, 1)])) is Outcome.BUFFERED
    with pytest.raises(StaleSequenceError, match="taken"):  # seq 2 waits in the buffer
        ledger.submit(w[0].make(Bond(3), seq=2))
    assert ledger.state.account(A).equivocations == 0


def test_equivocation_while_both_are_buffered(w: list[Wallet]) -> None:
    one = w[0].make(Bond(1))
    x, y = w[0].make(Transfer(B, 100)), w[0].make(Transfer(C, 100), seq=2)
    three = w[0].make(Transfer(B, 1))
    ledger = Ledger(GENESIS)
    assert feed(ledger, x, three, y) == [Outcome.BUFFERED, Outcome.BUFFERED,
                                         Outcome.EQUIVOCATION]
    assert ledger.buffered == 2  # the void slot and seq 3
    assert feed(ledger, one) == [Outcome.APPLIED]
    account = ledger.state.account(A)
    assert account.seq == 3
    assert account.equivocations == 1
    assert account.bonded == 201
    assert ledger.state.burned == 200  # half of 401, rounded down
    assert account.balance == 998  # bonded 1, then seq 3 sent 1; neither x nor y
    assert (A, C) not in ledger.state.pending
    assert feed(ledger, w[0].make(Transfer(C, 7), seq=2)) == [Outcome.VOID]
    [evidence] = ledger.take_evidence()
    assert evidence == Evidence(x, y)
    assert ledger.take_evidence() == []
    assert full_replay(ledger).encode() == ledger.state.encode()


def test_late_equivocation_undoes_what_was_built_on_it(w: list[Wallet]) -> None:
    """A pays C, C spends it; then A's conflicting payment to B shows up. Both of A's
    payments are void, so C's spend fails on replay, wherever it was first accepted."""
    pay_c = w[0].make(Transfer(C, 800))
    c_spends = w[2].make(Transfer(B, 800), acks=[(A, 1)])
    pay_b = w[0].make(Transfer(B, 800), seq=1)
    a_next = w[0].make(Unbond(100))

    first = Ledger(GENESIS)
    assert feed(first, pay_c, c_spends, a_next) == [Outcome.APPLIED] * 3
    assert first.state.account(C).seq == 1
    assert (C, B) in first.state.pending
    assert feed(first, pay_b) == [Outcome.EQUIVOCATION]
    state = first.state
    assert state.account(C).seq == 1
    assert state.account(C).balance == 0  # C's spend failed on replay
    assert (C, B) not in state.pending
    assert (A, C) not in state.pending
    assert (A, B) not in state.pending
    assert state.account(A).balance == 1000
    assert state.account(A).equivocations == 1
    assert state.account(A).bonded == 100
    assert state.account(A).unbonding == ((2, 100),)

    second = Ledger(GENESIS)
    feed(second, pay_b, a_next, c_spends, pay_c)
    assert second.state.encode() == first.state.encode()
    assert full_replay(first).encode() == first.state.encode()


def test_evidence_reaches_a_node_that_saw_one_version(w: list[Wallet]) -> None:
    x, y = w[0].make(Transfer(B, 100)), w[0].make(Transfer(C, 100), seq=1)
    seen_x, seen_y = Ledger(GENESIS), Ledger(GENESIS)
    feed(seen_x, x)
    feed(seen_y, y)
    assert seen_x.state.encode() != seen_y.state.encode()
    evidence = Evidence(x, y)
    assert seen_x.receive(evidence) is Outcome.EQUIVOCATION
    assert seen_y.receive(Evidence.decode(evidence.wire, GENESIS.chain)) is Outcome.EQUIVOCATION
    assert seen_x.receive(evidence) is Outcome.VOID
    assert seen_x.state.encode() == seen_y.state.encode()
    assert seen_x.state.account(A).equivocations == 1


def test_the_timekeeper_equivocating_still_starts_the_epoch(w: list[Wallet]) -> None:
    tk = Wallet(TIMEKEEPER, GENESIS.chain)
    one = tick(tk)
    other = tk.make(Tick((WorkReport(A, 1),)), seq=1, epoch=0)
    waiting = w[0].make(Bond(1), epoch=1)
    ledger = Ledger(GENESIS)
    assert feed(ledger, waiting, one, other) == [Outcome.BUFFERED, Outcome.APPLIED,
                                                 Outcome.EQUIVOCATION]
    assert ledger.state.epoch == 1
    assert ledger.buffered == 0
    assert ledger.state.account(A).seq == 1


def test_late_equivocation_replays_from_a_checkpoint(w: list[Wallet]) -> None:
    txs = [w[1].make(Transfer(C, 1)) for _ in range(20)]
    early = w[0].make(Transfer(C, 500))
    conflicting = w[0].make(Transfer(B, 500), seq=1)
    ledger = Ledger(GENESIS, LedgerConfig(checkpoint_interval=4, checkpoints=3))
    feed(ledger, *txs[:15], early, *txs[15:])
    assert feed(ledger, conflicting) == [Outcome.EQUIVOCATION]
    assert full_replay(ledger).encode() == ledger.state.encode()
    reference = Ledger(GENESIS)
    feed(reference, conflicting, early, *txs)
    assert reference.state.encode() == ledger.state.encode()


def test_the_buffer_is_bounded(w: list[Wallet]) -> None:
    ledger = Ledger(GENESIS, LedgerConfig(max_buffered=2, max_ahead=5))
    feed(ledger, w[0].make(Bond(1), seq=2), w[0].make(Bond(1), seq=3))
    with pytest.raises(BufferFullError, match="already buffered"):
        ledger.receive(w[0].make(Bond(1), seq=4))
    roomy = Ledger(GENESIS, LedgerConfig(max_ahead=5))
    with pytest.raises(BufferFullError, match="more than 5 ahead"):
        roomy.receive(w[1].make(Bond(1), seq=7))
    with pytest.raises(BufferFullError):
        roomy.receive(w[1].make(Bond(1), acks=[(A, 10)]))
    with pytest.raises(BufferFullError):
        roomy.receive(w[1].make(Bond(1), epoch=99))
    assert roomy.buffered == 0


def test_counts_measure_what_came_in(w: list[Wallet]) -> None:
    ledger = Ledger(GENESIS)
    one = w[0].make(Bond(1))
    feed(ledger, one, one, w[0].make(Transfer(B, 10**6)))
    assert ledger.counts == {Outcome.APPLIED: 1, Outcome.DUPLICATE: 1, Outcome.FAILED: 1}
