"""The pure state machine, one rule at a time."""

from __future__ import annotations

import pytest

from swarm.staking import (
    AlreadyClaimedError,
    Bond,
    Claim,
    Deposit,
    InsufficientStakeError,
    MalformedTransactionError,
    MissingDependencyError,
    NoDepositError,
    OverdraftError,
    SequenceGapError,
    StaleSequenceError,
    State,
    Tick,
    Transfer,
    Unbond,
    WorkReport,
    apply,
    settle,
    sign_receipt,
    void,
    waiting_on,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, check_invariants, make_genesis, tick, wallets

GENESIS = make_genesis({0: 1000, 1: 500}, {1: 400}, slash_ppm=250_000, unbonding_epochs=2)
A, B, C = (USERS[i].peer_id for i in range(3))


@pytest.fixture
def w() -> list[Wallet]:
    return wallets(GENESIS)


@pytest.fixture
def tk() -> Wallet:
    return Wallet(TIMEKEEPER, GENESIS.chain)


def run(*txs: object) -> State:
    state = State.genesis(GENESIS)
    for stx in txs:
        state = apply(state, stx)  # type: ignore[arg-type]
        check_invariants(state)
    return state


def test_genesis_state() -> None:
    state = State.genesis(GENESIS)
    assert state.account(A).balance == 1000
    assert state.stake(B) == 400
    assert state.supply == state.holdings() == 1900
    assert state.epoch == 0


def test_a_transfer_is_pending_until_the_recipient_acknowledges_it(w: list[Wallet]) -> None:
    pay = w[0].make(Transfer(C, 300))
    state = run(pay)
    assert state.account(A).balance == 700
    assert state.account(C).balance == 0
    assert list(state.pending_for(C)) == [(A, 1, state.pending[(A, C)][1])]
    # C cannot spend it before acknowledging it...
    with pytest.raises(OverdraftError):
        apply(state, w[2].make(Transfer(B, 100)))
    # ...and can once it does.
    spend = Wallet(USERS[2], GENESIS.chain).make(Transfer(B, 100), acks=[(A, 1)])
    state = apply(state, spend)
    assert state.account(C).balance == 200
    assert (A, C) not in state.pending
    check_invariants(state)


def test_an_ack_takes_only_credits_up_to_the_named_position(w: list[Wallet]) -> None:
    state = run(w[0].make(Transfer(C, 10)), w[0].make(Bond(5)), w[0].make(Transfer(C, 20)))
    state = apply(state, w[2].make(Bond(10), acks=[(A, 2)]))
    assert state.account(C).bonded == 10
    assert state.account(C).balance == 0
    assert dict(state.pending[(A, C)]) == {3: state.pending[(A, C)][3]}
    state = apply(state, w[2].make(Bond(20), acks=[(A, 3)]))
    assert state.account(C).bonded == 30
    check_invariants(state)


@pytest.mark.parametrize("body", [Transfer(B, 1001), Bond(1001), Deposit(B, 1001)],
                         ids=["transfer", "bond", "deposit"])
def test_overdraft_is_refused_precisely(w: list[Wallet], body: Transfer | Bond | Deposit) -> None:
    with pytest.raises(OverdraftError, match="1001 of a spendable 1000"):
        run(w[0].make(body))


def test_a_failed_transaction_uses_its_sequence_number_only(w: list[Wallet]) -> None:
    state = State.genesis(GENESIS)
    state, failure = settle(state, w[0].make(Transfer(B, 5000)))
    assert isinstance(failure, OverdraftError)
    assert state.account(A).seq == 1
    assert state.account(A).balance == 1000
    state, failure = settle(state, w[0].make(Transfer(B, 5)))
    assert failure is None
    assert state.account(A).balance == 995


def test_wrong_sequence_numbers(w: list[Wallet]) -> None:
    first = w[0].make(Bond(1))
    second = w[0].make(Bond(1))
    state = State.genesis(GENESIS)
    assert waiting_on(state, second.tx) == (A, 1)
    with pytest.raises(SequenceGapError):
        apply(state, second)
    state = apply(state, first)
    with pytest.raises(StaleSequenceError):
        apply(state, first)
    with pytest.raises(StaleSequenceError):
        waiting_on(state, first.tx)


def test_missing_acknowledged_position_and_epoch(w: list[Wallet], tk: Wallet) -> None:
    state = State.genesis(GENESIS)
    spend = w[2].make(Bond(1), acks=[(A, 2)])
    assert waiting_on(state, spend.tx) == (A, 2)
    with pytest.raises(MissingDependencyError):
        apply(state, spend)
    later = w[0].make(Bond(1), epoch=1)
    assert waiting_on(state, later.tx) == (TIMEKEEPER.peer_id, 1)
    with pytest.raises(MissingDependencyError):
        apply(state, later)
    state = apply(state, tick(tk))
    assert state.epoch == 1
    assert apply(state, later).account(A).epoch == 1


def test_only_the_timekeeper_ticks_and_it_only_ticks(w: list[Wallet], tk: Wallet) -> None:
    with pytest.raises(MalformedTransactionError):
        run(w[0].make(Tick(()), epoch=0))
    with pytest.raises(MalformedTransactionError):
        run(tk.make(Bond(1)))


@pytest.mark.parametrize("body", [
    Transfer(TIMEKEEPER.peer_id, 1), Deposit(TIMEKEEPER.peer_id, 1),
    Claim(sign_receipt(GENESIS.chain, TIMEKEEPER, USERS[0].peer_id, 1))],
    ids=["transfer", "deposit", "claim"])
def test_nothing_goes_to_or_from_the_timekeeper(body: Transfer | Deposit | Claim) -> None:
    with pytest.raises(MalformedTransactionError, match="holds no money"):
        run(Wallet(USERS[0], GENESIS.chain).make(body))


def test_a_tick_does_not_reward_the_timekeeper(tk: Wallet) -> None:
    with pytest.raises(MalformedTransactionError, match="holds no money"):
        run(tick(tk, [WorkReport(TIMEKEEPER.peer_id, 5)]))


def test_unbonded_stake_is_released_after_the_delay(w: list[Wallet], tk: Wallet) -> None:
    b = w[1]
    state = run(b.make(Unbond(100)))
    assert state.stake(B) == 300
    assert state.account(B).unbonding == ((2, 100),)
    with pytest.raises(InsufficientStakeError, match="unbonds 301 of 300"):
        apply(state, Wallet(USERS[1], GENESIS.chain, seq=1).make(Unbond(301)))
    state = apply(state, tick(tk))
    state = apply(state, b.make(Bond(1), epoch=1))  # epoch 1: not released yet
    assert state.account(B).unbonding == ((2, 100),)
    assert state.account(B).balance == 499
    state = apply(state, tick(tk))
    state = apply(state, b.make(Bond(1), epoch=2))
    assert state.account(B).unbonding == ()
    assert state.account(B).balance == 598
    check_invariants(state)


def test_void_slashes_bonded_and_unbonding_stake(w: list[Wallet]) -> None:
    state = run(w[1].make(Unbond(100)))
    state = void(state, B, 2)
    account = state.account(B)
    assert account.seq == 2
    assert account.equivocations == 1
    assert account.bonded == 225  # 25% of 300 burned
    assert account.unbonding == ((2, 75),)  # and 25% of the 100 unbonding
    assert state.burned == 100
    assert account.balance == 500  # the spendable balance is not stake
    check_invariants(state)
    with pytest.raises(StaleSequenceError):
        void(state, B, 2)
    with pytest.raises(SequenceGapError):
        void(state, B, 4)


def _deposit(w: list[Wallet], amount: int) -> State:
    """A deposits `amount` for C; C has not acknowledged it yet."""
    state = run(w[0].make(Deposit(C, amount)))
    assert state.channel(A, C).deposited == 0  # not acknowledged yet
    return state


def test_a_receipt_pays_only_what_it_adds(w: list[Wallet]) -> None:
    state = _deposit(w, 100)
    c = w[2]
    state = apply(state, c.make(Claim(sign_receipt(GENESIS.chain, USERS[0], C, 30)),
                                acks=[(A, 1)]))
    assert state.account(C).balance == 30
    assert state.channel(A, C).claimed == 30
    # The same receipt again pays nothing, and says so.
    with pytest.raises(AlreadyClaimedError):
        apply(state, c.make(Claim(sign_receipt(GENESIS.chain, USERS[0], C, 30))))
    c.seq -= 1
    with pytest.raises(AlreadyClaimedError):  # an older, smaller receipt too
        apply(state, c.make(Claim(sign_receipt(GENESIS.chain, USERS[0], C, 20))))
    c.seq -= 1
    state = apply(state, c.make(Claim(sign_receipt(GENESIS.chain, USERS[0], C, 45))))
    assert state.account(C).balance == 45
    assert state.channel(A, C).available == 55
    check_invariants(state)


def test_a_receipt_beyond_the_deposit_pays_the_deposit_and_the_rest_later(
        w: list[Wallet]) -> None:
    state = _deposit(w, 100)
    c = w[2]
    big = Claim(sign_receipt(GENESIS.chain, USERS[0], C, 150))
    state = apply(state, c.make(big, acks=[(A, 1)]))
    assert state.account(C).balance == 100
    with pytest.raises(NoDepositError):
        apply(state, c.make(big))
    c.seq -= 1
    state = apply(state, w[0].make(Deposit(C, 100)))
    state = apply(state, c.make(big, acks=[(A, 2)]))
    assert state.account(C).balance == 150
    assert state.channel(A, C).available == 50
    check_invariants(state)


def test_no_claim_without_a_deposit(w: list[Wallet]) -> None:
    with pytest.raises(NoDepositError):
        run(w[2].make(Claim(sign_receipt(GENESIS.chain, USERS[0], C, 10))))


def test_a_tick_advances_the_epoch_and_reputation_without_inflation(tk: Wallet) -> None:
    state = run(tick(tk, [WorkReport(A, served=10, failed=0)]))
    assert state.epoch == 1
    assert state.minted == 0
    assert not state.pending
    assert state.reputation[A] == 600_000  # 0.8 * 0.5 + 0.2 * 1.0
    state = apply(state, tick(tk))
    assert state.epoch == 2


def test_a_tick_mints_rewards_as_credits_the_worker_acknowledges() -> None:
    genesis = make_genesis({0: 1000, 1: 1000}, inflation_ppm=10_000)  # 1% per epoch
    tk = Wallet(TIMEKEEPER, genesis.chain)
    state = State.genesis(genesis)
    state = apply(state, tick(tk, [WorkReport(A, 30, 0), WorkReport(B, 10, 0)]))
    assert state.minted == 20  # 1% of 2000, split 3:1 by equal reliability
    credits = {p: c.amount for (p_src, p), cs in state.pending.items() for c in cs.values()}
    assert credits == {A: 15, B: 5}
    check_invariants(state)
    a = Wallet(USERS[0], genesis.chain)
    state = apply(state, a.make(Bond(1015), acks=[(TIMEKEEPER.peer_id, 1)], epoch=1))
    assert state.stake(A) == 1015
    check_invariants(state)


def test_canonical_encoding_round_trips(w: list[Wallet], tk: Wallet) -> None:
    state = run(w[0].make(Transfer(C, 10)), w[0].make(Deposit(C, 50)), w[1].make(Unbond(7)),
                tick(tk))
    state = void(state, B, 2)
    assert State.decode(state.encode(), GENESIS) == state
    assert State.decode(state.encode(), GENESIS).encode() == state.encode()


def test_being_early_is_not_a_failure(w: list[Wallet]) -> None:
    """Only refusals by the state use up a number; being early does not."""
    state = State.genesis(GENESIS)
    early = w[0].make(Bond(1), seq=2)
    with pytest.raises(SequenceGapError):
        settle(state, early)


def test_eligible_needs_the_minimum_stake_and_no_equivocation() -> None:
    from dataclasses import replace

    from swarm.staking import eligible

    state = State.genesis(make_genesis(bonded={0: 100}))
    peer = USERS[0].peer_id
    assert eligible(state, peer, 100)
    assert not eligible(state, peer, 101)
    assert not eligible(state, USERS[1].peer_id, 1)
    assert eligible(state, USERS[1].peer_id, 0)
    cheat = replace(state.account(peer), equivocations=1)
    assert not eligible(replace(state, accounts=state.accounts.set(peer, cheat)), peer, 0)
