"""Wrong-result evidence: what an attacker can send, what a slash does, once per offence, and
the same state whatever order transactions and evidence arrive in."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from swarm._tensors import Tolerance, tensors_digest
from swarm.protocol import Identity, ResponseSignature
from swarm.staking import (
    FAULT_MAGIC,
    FaultEvidence,
    InvalidEvidenceError,
    Ledger,
    LedgerConfig,
    Outcome,
    SignedOutputs,
    SignedTransaction,
    State,
    Transfer,
    Unbond,
    eligible,
)
from swarm.staking import Bond as BondTx
from tests.staking import USERS, Wallet, check_invariants, make_genesis, wallets

# Users 0..3 bonded providers (0 the offender in most tests), 4 unbonded.
GENESIS = make_genesis({i: 1000 for i in range(5)}, {0: 1000, 1: 500, 2: 500, 3: 500})
SLASH = GENESIS.params.slashing
TOL = Tolerance(rtol=1e-4, atol=1e-5)
MODEL = "sha256:" + "ab" * 32
INPUTS = bytes(range(32))


def outputs(values: list[float], name: str = "y") -> tuple[tuple[str, str, tuple[int, ...],
                                                                 bytes], ...]:
    raw = np.asarray(values, dtype="<f4").tobytes()
    return ((name, "FP32", (1, len(values)), raw),)


def signed(identity: Identity, values: list[float], *, rid: str = "r1", model: str = MODEL,
           inputs: bytes = INPUTS) -> SignedOutputs:
    outs = outputs(values)
    return SignedOutputs(ResponseSignature.sign(identity, rid, model, inputs,
                                                tensors_digest(outs)), outs)


def evidence(*, offender: int = 0, witnesses: tuple[int, int] = (1, 2), after_seq: int = 0,
             wrong: float = 2.0, rid: str = "r1",
             tolerance: Tolerance = TOL) -> FaultEvidence:
    good = [1.0, 0.5]
    return FaultEvidence.make(
        GENESIS.chain, after_seq, tolerance, signed(USERS[offender], [wrong, 0.5], rid=rid),
        [signed(USERS[w], good, rid=f"{rid}-{w}") for w in witnesses])


def test_valid_evidence_round_trips_and_slashes_once() -> None:
    ev = evidence()
    ev.check(SLASH)
    assert ev.wire.startswith(FAULT_MAGIC)
    again = FaultEvidence.decode(ev.wire, GENESIS.chain, SLASH)
    assert again.wire == ev.wire
    assert again.key == ev.key
    ledger = Ledger(GENESIS)
    assert ledger.receive(ev.wire) is Outcome.FAULT
    offender = ledger.state.account(USERS[0].peer_id)
    assert offender.faults == 1
    assert offender.bonded == 1000 - 1000 * SLASH.wrong_result_ppm // 1_000_000
    assert ledger.state.burned == 1000 * SLASH.wrong_result_ppm // 1_000_000
    assert not eligible(ledger.state, USERS[0].peer_id, 1)
    assert eligible(ledger.state, USERS[1].peer_id, 1)
    assert ledger.state.reputation_of(USERS[0].peer_id) == \
        GENESIS.params.initial_reputation_ppm - SLASH.wrong_result_reputation_ppm
    check_invariants(ledger.state)
    # Replayed (as bytes or object): the same offence is slashed once.
    assert ledger.receive(ev.wire) is Outcome.DUPLICATE
    assert ledger.receive(again) is Outcome.DUPLICATE
    # The same offence with other witnesses is still the same offence.
    assert ledger.receive(evidence(witnesses=(2, 3))) in (Outcome.DUPLICATE, Outcome.FAULT)
    assert ledger.state.account(USERS[0].peer_id).faults == 1
    assert ledger.take_faults()


def test_forged_signature_is_rejected() -> None:
    ev = evidence()
    forged = replace(ev.offender.signature, signature=bytes(64))
    bad = replace(ev, offender=replace(ev.offender, signature=forged))
    with pytest.raises(InvalidEvidenceError, match="does not verify"):
        bad.check()
    with pytest.raises(InvalidEvidenceError):
        Ledger(GENESIS).receive(bad.wire)
    # A witness signature made by another key than the one it names.
    w = ev.witnesses[0]
    other = ResponseSignature.sign(USERS[3], w.signature.request_id, MODEL, INPUTS,
                                   w.signature.outputs_digest)
    stolen = replace(w, signature=replace(other, signer=w.signer))
    with pytest.raises(InvalidEvidenceError, match="does not verify"):
        replace(ev, witnesses=(stolen, ev.witnesses[1])).check()


def test_outputs_other_than_the_signed_ones_are_rejected() -> None:
    ev = evidence()
    swapped = replace(ev.offender, outputs=outputs([3.0, 0.5]))
    with pytest.raises(InvalidEvidenceError, match="not the ones it signed"):
        replace(ev, offender=swapped).check()


def test_witnesses_that_are_one_key_or_the_offender_are_rejected() -> None:
    a = signed(USERS[1], [1.0, 0.5], rid="x")
    b = signed(USERS[1], [1.0, 0.5], rid="y")
    off = signed(USERS[0], [2.0, 0.5])
    with pytest.raises(InvalidEvidenceError, match="three different keys"):
        FaultEvidence.make(GENESIS.chain, 0, TOL, off, [a, b]).check()
    self_witness = signed(USERS[0], [1.0, 0.5], rid="z")
    with pytest.raises(InvalidEvidenceError, match="three different keys"):
        FaultEvidence.make(GENESIS.chain, 0, TOL, off, [a, self_witness]).check()


def test_witnesses_that_disagree_are_rejected() -> None:
    off = signed(USERS[0], [2.0, 0.5])
    with pytest.raises(InvalidEvidenceError, match="witnesses disagree"):
        FaultEvidence.make(GENESIS.chain, 0, TOL, off, [signed(USERS[1], [1.0, 0.5]),
                                                         signed(USERS[2], [1.5, 0.5])]).check()


def test_outputs_within_tolerance_are_not_a_fault() -> None:
    with pytest.raises(InvalidEvidenceError, match="agree with"):
        evidence(wrong=1.00001).check()  # 1e-5 off: inside rtol 1e-4
    # A tolerance tighter than the genesis floor cannot turn float noise into a fault.
    tight = evidence(wrong=1.00001, tolerance=Tolerance(rtol=0.0, atol=0.0))
    with pytest.raises(InvalidEvidenceError, match="below the network floor"):
        tight.check(SLASH)
    with pytest.raises(InvalidEvidenceError, match="above the network cap"):
        evidence(tolerance=Tolerance(rtol=0.5, atol=1e-5)).check(SLASH)


def test_responses_for_other_inputs_or_models_are_rejected() -> None:
    off = signed(USERS[0], [2.0, 0.5])
    for kwargs in ({"inputs": bytes(32)}, {"model": "sha256:" + "cd" * 32}):
        w = signed(USERS[1], [1.0, 0.5], **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidEvidenceError, match="different models or inputs"):
            FaultEvidence.make(GENESIS.chain, 0, TOL, off,
                               [w, signed(USERS[2], [1.0, 0.5])]).check()


def test_unstaked_witness_is_not_heard() -> None:
    ev = evidence(witnesses=(1, 4))
    ev.check(SLASH)  # valid on its own ...
    with pytest.raises(InvalidEvidenceError, match="not eligible"):
        Ledger(GENESIS).receive(ev)  # ... but user 4 has no stake


@pytest.mark.parametrize("mangle", [
    lambda w: w[:-1],  # truncated
    lambda w: w + b"\0",  # trailing
    lambda w: b"SWF2" + w[4:],  # another version
    lambda w: w[:4] + bytes(32) + w[36:],  # another chain
    lambda w: w + bytes(5 << 20),  # oversize
])
def test_mangled_wire_is_rejected(mangle: object) -> None:
    wire = mangle(evidence().wire)  # type: ignore[operator]
    with pytest.raises(InvalidEvidenceError):
        FaultEvidence.decode(wire, GENESIS.chain, SLASH)


def test_evidence_waits_for_its_point_and_late_evidence_replays() -> None:
    w = wallets(GENESIS)
    bond = w[0].make(BondTx(100))
    unbond = w[0].make(Unbond(300))
    ev = evidence(after_seq=1)
    # Early: the slash waits until the offender reaches slot 1.
    early = Ledger(GENESIS)
    assert early.receive(ev) is Outcome.FAULT
    assert early.state.account(USERS[0].peer_id).faults == 0
    for stx in (bond, unbond):
        early.receive(stx)
    # Late: the offender is already past slot 1; the ledger replays.
    late = Ledger(GENESIS)
    for stx in (bond, unbond):
        late.receive(stx)
    assert late.receive(ev) is Outcome.FAULT
    assert early.state.encode() == late.state.encode()
    account = late.state.account(USERS[0].peer_id)
    assert account.faults == 1
    burned = 1100 * SLASH.wrong_result_ppm // 1_000_000  # stake after slot 1
    assert account.bonded + account.unbonding_total == 1100 - burned
    check_invariants(late.state)


# --- order independence ---------------------------------------------------------------

BOUNDED = settings(max_examples=15, deadline=None, database=None, derandomize=True,
                   phases=[Phase.explicit, Phase.reuse, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow])


def stream(actions: list[tuple[int, int]], points: list[tuple[int, int, int]]
           ) -> tuple[list[SignedTransaction], list[FaultEvidence]]:
    """The offender (user 0) and user 3 bond, unbond and transfer; evidence against users 0
    and 3 at points along their chains (some for one offence at two points)."""
    w = [Wallet(USERS[i], GENESIS.chain) for i in range(4)]
    txs = []
    for who, amount in actions:
        wallet = w[(0, 3)[who % 2]]
        kind = amount % 3
        body = BondTx(amount) if kind == 0 else Unbond(amount) if kind == 1 else \
            Transfer(USERS[1].peer_id, amount)
        txs.append(wallet.make(body))
    if w[3].seq:  # user 3 equivocates its first slot: late ones replay from checkpoints
        txs.append(w[3].make(Transfer(USERS[2].peer_id, 1), seq=1))
    heads = (w[0].seq, w[3].seq)
    faults = [evidence(offender=(0, 3)[who % 2], witnesses=(1, 2), rid=f"r{rid}",
                       after_seq=at % (heads[who % 2] + 1))
              for who, rid, at in points]
    return txs, faults


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 400)), max_size=8),
       st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2), st.integers(0, 9)),
                min_size=1, max_size=5),
       st.randoms(use_true_random=False))
def test_any_order_and_duplicates_of_txs_and_evidence_give_one_state(
        actions: list[tuple[int, int]], points: list[tuple[int, int, int]],
        rng: random.Random) -> None:
    txs, faults = stream(actions, points)
    items: list[SignedTransaction | bytes] = [*txs, *(f.wire for f in faults)]
    reference = Ledger(GENESIS)
    for item in items:
        reference.receive(item)
    check_invariants(reference.state)
    small = LedgerConfig(checkpoint_interval=2)
    offences = {f.key for f in faults}
    total_faults = sum(a.faults for a in reference.state.accounts.values())
    assert total_faults == len(offences)
    for _ in range(2):
        shuffled = items + rng.sample(items, k=min(3, len(items)))
        rng.shuffle(shuffled)
        ledger = Ledger(GENESIS, small)
        for item in shuffled:
            ledger.receive(item)
            check_invariants(ledger.state)
        assert ledger.state.encode() == reference.state.encode()
    # Supply falls by exactly what was burned; nothing minted here.
    state: State = reference.state
    assert state.supply == GENESIS.supply - state.burned


@pytest.mark.parametrize("interval", [1, 2, 3])
def test_a_fault_survives_replays_from_checkpoints(interval: int) -> None:
    """Checkpoints taken before a fault was known must not drop it when a late
    equivocation replays from them."""
    w = wallets(GENESIS)
    first = w[0].make(BondTx(100))
    others = [w[1].make(Transfer(USERS[2].peer_id, 5)) for _ in range(4)]
    late = w[1].make(Transfer(USERS[3].peer_id, 7), seq=3)  # equivocates others[2]
    ev = evidence(after_seq=1)
    config = LedgerConfig(checkpoint_interval=interval)
    ledger = Ledger(GENESIS, config)
    for stx in (first, *others):
        ledger.receive(stx)
    assert ledger.receive(ev) is Outcome.FAULT
    assert ledger.receive(late) is Outcome.EQUIVOCATION  # replays from a checkpoint
    reference = Ledger(GENESIS, config)
    for item in (ev, late, *reversed(others), first):
        reference.receive(item)
    assert ledger.state.account(USERS[0].peer_id).faults == 1
    assert ledger.state.encode() == reference.state.encode()


def test_variants_of_one_offence_at_one_point_change_nothing() -> None:
    ledger = Ledger(GENESIS)
    assert ledger.receive(evidence()) is Outcome.FAULT
    before = ledger.state.encode()
    for rtol in (2e-4, 3e-4, 5e-4):  # other bytes, the same offence, the same point
        variant = evidence(tolerance=Tolerance(rtol=rtol, atol=1e-5))
        assert ledger.receive(variant) is Outcome.DUPLICATE
    assert ledger.state.encode() == before
    assert len(ledger.faults) == 1
