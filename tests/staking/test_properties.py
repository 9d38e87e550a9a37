"""Properties over random transaction streams (hypothesis, bounded and derandomized).

A stream is what a handful of accounts and the timekeeper sign, each account numbering its
own transactions and acknowledging only what was already signed (as real clients do), with
overdrafts, stale receipts and equivocations mixed in. Delivered in any order, with any
duplicates, every node must end in the same state, conserving money all the way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from swarm.staking import (
    Bond,
    Claim,
    Deposit,
    Ledger,
    Outcome,
    SignedTransaction,
    State,
    Transfer,
    Unbond,
    WorkReport,
    replay,
    sign_receipt,
)
from tests.staking import TIMEKEEPER, USERS, Wallet, check_invariants, make_genesis, tick

N = 4  # accounts in play
GENESIS = make_genesis({i: 1000 for i in range(N)}, {i: 200 for i in range(N)},
                       slash_ppm=500_000, unbonding_epochs=1, inflation_ppm=50_000)
PEERS = [USERS[i].peer_id for i in range(N)]
TK = TIMEKEEPER.peer_id

# Derandomized (the same examples every run) and bounded. No shrinking: an example signs
# dozens of transactions, so shrinking one takes minutes, past the test timeout, and the
# unshrunk example (printed at once) is small enough to read.
BOUNDED = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                   phases=[Phase.explicit, Phase.reuse, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KINDS = ("transfer", "transfer", "bond", "unbond", "deposit", "claim", "tick", "equivocate")
action = st.tuples(st.sampled_from(KINDS), st.integers(0, N - 1), st.integers(1, N - 1),
                   st.integers(1, 700), st.integers(0, (1 << (N + 1)) - 1), st.booleans())


@dataclass
class Stream:
    txs: list[SignedTransaction]
    # Slots the stream signed twice: the equivocations.
    doubled: set[tuple[object, int]]


def build(actions: list[tuple[str, int, int, int, int, bool]]) -> Stream:
    """Sign the stream the actions describe, in creation order (a causal order)."""
    wallets = [Wallet(USERS[i], GENESIS.chain) for i in range(N)]
    tk = Wallet(TIMEKEEPER, GENESIS.chain)
    owed: dict[tuple[int, int], int] = {}  # (payer, payee) -> latest receipt total
    txs: list[SignedTransaction] = []
    doubled: set[tuple[object, int]] = set()
    for kind, s, offset, amount, mask, flag in actions:
        t = (s + offset) % N  # never s itself
        wallet = wallets[s]
        if kind == "tick":
            txs.append(tick(tk, [WorkReport(PEERS[s], amount, amount % 7),
                                 WorkReport(PEERS[t], amount // 2, 0)]))
            continue
        # Acknowledge, as of now, what some of the others signed (bit j: account j; bit N:
        # the timekeeper's latest tick, i.e. its rewards); a claim acknowledges the payer's
        # deposits.
        acks = [(PEERS[j], wallets[j].seq) for j in range(N)
                if j != s and (mask >> j & 1 or (kind == "claim" and j == t)) and wallets[j].seq]
        if mask >> N & 1 and tk.seq > 0:
            acks.append((TK, tk.seq))
        epoch = tk.seq if flag else 0
        if kind == "equivocate":
            if wallet.seq == 0:
                continue
            seq = 1 + amount % wallet.seq
            if seq in {q for (p, q) in doubled if p == wallet.peer}:
                continue
            txs.append(wallet.make(Transfer(PEERS[t], 10**6 + amount), acks=acks, seq=seq))
            doubled.add((wallet.peer, seq))
            continue
        if kind == "transfer":
            body: object = Transfer(PEERS[t], amount)
        elif kind == "bond":
            body = Bond(amount // 3 + 1)
        elif kind == "unbond":
            body = Unbond(amount // 3 + 1)
        elif kind == "deposit":
            body = Deposit(PEERS[t], amount // 2 + 1)
        else:  # the payee s claims from payer t; flag: a fresh, higher receipt
            total = owed.get((t, s), 0) + (amount // 4 + 1 if flag or not owed.get((t, s)) else 0)
            owed[(t, s)] = total
            body = Claim(sign_receipt(GENESIS.chain, USERS[t], PEERS[s], total))
        txs.append(wallet.make(body, acks=acks, epoch=epoch))  # type: ignore[arg-type]
    return Stream(txs, doubled)


def deliver(items: list[SignedTransaction], *, wire: bool = False) -> Ledger:
    ledger = Ledger(GENESIS)
    for stx in items:
        ledger.receive(stx.wire if wire else stx)
        check_invariants(ledger.state)
    return ledger


streams = st.lists(action, min_size=10, max_size=40).map(build).filter(lambda s: bool(s.txs))


@BOUNDED
@given(stream=streams, data=st.data())
def test_any_order_and_any_duplicates_give_the_same_state(stream: Stream,
                                                          data: st.DataObject) -> None:
    reference = deliver(stream.txs)
    assert reference.buffered == 0
    order = data.draw(st.permutations(stream.txs))
    copies = data.draw(st.lists(st.sampled_from(stream.txs), max_size=len(stream.txs)))
    shuffled = list(order) + copies
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(shuffled)
    other = deliver(shuffled)
    assert other.buffered == 0
    assert other.state.encode() == reference.state.encode()
    assert other.log.void_slots() == reference.log.void_slots()
    # And the log each one wrote replays to its state.
    for ledger in (reference, other):
        rebuilt = replay(State.genesis(GENESIS), ledger.log.entries(), ledger.log.void_slots())
        assert rebuilt.encode() == ledger.state.encode()


@BOUNDED
@given(stream=streams, seed=st.integers(0, 2**32))
def test_equivocations_are_punished_identically_whichever_arrives_first(
        stream: Stream, seed: int) -> None:
    orders = [list(stream.txs), list(reversed(stream.txs))]
    shuffled = list(stream.txs)
    random.Random(seed).shuffle(shuffled)
    orders.append(shuffled)
    states = [deliver(order).state for order in orders]
    for state in states:
        punished = {peer: state.account(peer).equivocations for peer in PEERS}
        assert punished == {peer: sum(1 for p, _ in stream.doubled if p == peer)
                            for peer in PEERS}
    assert len({s.encode() for s in states}) == 1
    assert len({s.burned for s in states}) == 1
    if stream.doubled:
        assert states[0].burned > 0 or all(
            states[0].account(p).bonded + states[0].account(p).unbonding_total == 0
            for p, _ in stream.doubled)


@settings(BOUNDED, max_examples=10)
@given(stream=st.lists(action, min_size=1, max_size=15).map(build), data=st.data())
def test_wire_bytes_with_signature_checks_give_the_same_state(stream: Stream,
                                                               data: st.DataObject) -> None:
    reference = deliver(stream.txs)
    other = deliver(list(data.draw(st.permutations(stream.txs))), wire=True)
    assert other.state.encode() == reference.state.encode()


@BOUNDED
@given(deposits=st.lists(st.integers(1, 100), min_size=1, max_size=4),
       receipts=st.lists(st.integers(1, 400), min_size=1, max_size=8),
       replays=st.lists(st.integers(0, 7), max_size=8))
def test_a_receipt_pays_once(deposits: list[int], receipts: list[int],
                             replays: list[int]) -> None:
    """Claims of any receipts, in any order, again and again, pay the payee exactly the
    highest receipt total, capped by what was deposited, and never anything twice."""
    payer, payee = Wallet(USERS[0], GENESIS.chain), Wallet(USERS[1], GENESIS.chain)
    txs = [payer.make(Deposit(PEERS[1], amount)) for amount in deposits]
    signed = [sign_receipt(GENESIS.chain, USERS[0], PEERS[1], total) for total in receipts]
    ledger = deliver(txs)
    before = ledger.state.account(PEERS[1]).balance
    claims = [signed[i % len(signed)] for i in range(len(signed))]
    claims += [signed[i % len(signed)] for i in replays]
    outcomes = []
    for i, receipt in enumerate(claims):
        acks = [(PEERS[0], payer.seq)] if i == 0 else []
        outcomes.append(ledger.receive(payee.make(Claim(receipt), acks=acks)))
        check_invariants(ledger.state)
    paid = ledger.state.account(PEERS[1]).balance - before
    assert paid == min(max(receipts), sum(deposits))
    assert ledger.state.channel(PEERS[0], PEERS[1]).claimed == paid
    # Only strictly increasing receipt totals (within the deposit) paid anything.
    assert outcomes.count(Outcome.APPLIED) <= len(set(receipts))
    assert all(o in (Outcome.APPLIED, Outcome.FAILED) for o in outcomes)
