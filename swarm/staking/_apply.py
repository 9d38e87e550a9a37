"""The ledger as a pure state machine: `apply(state, tx) -> state`, and the rules that make
its result depend only on which transactions were received, never on their order.

No consensus is needed for payments between owners of their own accounts: an account has one
owner, so only that owner can order its debits, and a payment system then has consensus
number 1 (Guerraoui, Kuznetsov, Monti, Pavlovič, Seredinschi, "The Consensus Number of a
Cryptocurrency", PODC 2019). FastPay (Baudet et al., AFT 2020) and Astro (Collins et al.,
DSN 2020) are practical designs on that result. The rules taken from them:

1. Per-account sequence numbers (all three). An account's transactions are numbered 1, 2,
   3, ... and applied strictly in that order, so its own chain is totally ordered without
   anyone else's help; a transaction waits for its sender's previous one.
2. Causal dependencies that carry value (Guerraoui et al., Fig. 3: a transfer is valid
   against the sender's history plus the incoming transfers it declares, its `deps`; Astro's
   dependency sets). Here a credit (transfer, deposit, reward) is not spendable on arrival:
   it waits as a pending credit until the recipient acknowledges it by naming
   `(source, seq)` in a later transaction of its own. Every check a transaction faces (its
   balance, its stake, its channel) then reads only its causal past: the sender's chain and
   the source-chain prefixes it acknowledged. Any order in which the causal past comes
   first gives the same result, and the Ledger buffers a transaction until that holds.
3. Equivocation detection (FastPay: a client must never sign two orders with one sequence
   number; here there is no quorum to refuse the second, so it is punished instead). Two
   different transactions signed by one account with one sequence number are evidence
   anyone can check. Both are void: the slot is used up with no effect except a slash that
   burns the genesis table's share of the offender's bonded and unbonding stake, taken at
   that slot of its own chain (so it reads the same stake on every node). Credits a void
   transaction would have made never exist; acknowledgements name chain positions, not
   transactions, so they stay valid and only what they acknowledge changes.
4. Failed transactions use their number (as an Ethereum nonce): a validly signed transaction
   that the state refuses (overdraft, ...) is recorded as failed, so its sender can go on
   with the next number; signing another at the same number would be an equivocation.

5. Wrong results (not from the papers: they have no outputs to judge). Evidence
   (_fault.FaultEvidence) names the point of the offender's own chain where its slash is
   taken: right after the offender's transaction `after_seq`. `fault` burns the genesis
   `wrong_result_ppm` share of the bonded and unbonding stake there, so, as with an
   equivocation, the slash reads one stake on every node: the offender's own chain up to
   that slot, which nothing else changes. Nothing another account does reads or writes the
   offender's stake, so where the slash stands among other accounts' transactions does not
   matter; two slashes at one point commute (the same function twice). A Ledger holds one
   piece of evidence per offence, keyed (offender, request id, inputs digest), and of two
   for one offence keeps the one with the lowest (after_seq, hash), the same everywhere;
   evidence for a point the offender has passed replays from a checkpoint, like a late
   equivocation. The reputation penalty is derived (State.reputation_of), not stored,
   because faults and ticks are not ordered against each other.

Time is the one shared thing an account cannot order alone: epochs are the sequence numbers
of a genesis-named timekeeper's Tick transactions (tick n starts epoch n), a transaction
that declares epoch e waits for tick e, and stake unbonded in epoch e is released into the
sender's balance by its first transaction declaring epoch e + unbonding_epochs or later.
Ticks also mint the epoch's rewards (_rewards) as credits to the workers; the timekeeper is
trusted for the clock and its work reports, and for nothing else: it cannot move anyone's
money. Reputation is changed by ticks only, for the same reason the reward base excludes
burns: slashes and ticks are not ordered against each other.
"""

from __future__ import annotations

import immutables

from swarm._types import PeerId
from swarm.staking._errors import (
    AlreadyClaimedError,
    InsufficientStakeError,
    MalformedTransactionError,
    MissingDependencyError,
    NoDepositError,
    OverdraftError,
    SequenceGapError,
    StaleSequenceError,
    TransactionFailedError,
)
from swarm.staking._genesis import PPM
from swarm.staking._rewards import rewards
from swarm.staking._state import Account, Channel, Credit, State
from swarm.staking._tx import (
    Bond,
    Claim,
    Deposit,
    SignedTransaction,
    Tick,
    Transaction,
    Transfer,
    Unbond,
)

__all__ = ["apply", "fault", "settle", "void", "waiting_on"]


def waiting_on(state: State, tx: Transaction) -> tuple[PeerId, int] | None:
    """What `tx` waits for, as (account, sequence number it must reach), or None when it is
    ready. Raises StaleSequenceError when the sender already used `tx.seq`."""
    own = state.account(tx.sender).seq
    if tx.seq <= own:
        raise StaleSequenceError(f"{tx.sender.short} already used sequence {tx.seq} (at {own})")
    if tx.seq > own + 1:
        return tx.sender, tx.seq - 1
    if tx.epoch > state.epoch:
        return state.params.timekeeper, tx.epoch
    for ack in tx.acks:
        if state.account(ack.source).seq < ack.seq:
            return ack.source, ack.seq
    return None


def check_sender(state: State, tx: Transaction) -> None:
    """Stateless rules that need the genesis: the chain, and that only the timekeeper ticks
    (and it only ticks, so its sequence numbers are the epochs). Nothing is sent to the
    timekeeper either: it could never acknowledge it, so the money would be stuck."""
    if tx.chain != state.chain:
        raise MalformedTransactionError("transaction made for another chain (genesis)")
    timekeeper = state.params.timekeeper
    body = tx.body
    if (tx.sender == timekeeper) != isinstance(body, Tick):
        raise MalformedTransactionError("only the timekeeper ticks, and it only ticks")
    if (isinstance(body, Transfer) and body.to == timekeeper) or \
            (isinstance(body, Deposit) and body.payee == timekeeper) or \
            (isinstance(body, Claim) and body.receipt.payer == timekeeper) or \
            (isinstance(body, Tick) and any(r.worker == timekeeper for r in body.reports)):
        raise MalformedTransactionError("the timekeeper holds no money")


def apply(state: State, stx: SignedTransaction) -> State:
    """The state after `stx`, which must be ready (see `waiting_on`).

    Signatures are checked when a transaction is decoded, not here. Raises
    MalformedTransactionError, StaleSequenceError, SequenceGapError or MissingDependencyError
    (not applicable), or a TransactionFailedError (OverdraftError, InsufficientStakeError,
    AlreadyClaimedError, NoDepositError) when the state refuses it.
    """
    tx = stx.tx
    check_sender(state, tx)
    blocker = waiting_on(state, tx)
    if blocker is not None:
        who, seq = blocker
        if who == tx.sender:
            raise SequenceGapError(f"{who.short} is at {state.account(who).seq}, "
                                   f"transaction is {tx.seq}")
        raise MissingDependencyError(f"waits for {who.short} to reach {seq}")
    return _execute(state, tx)


def settle(state: State, stx: SignedTransaction) -> tuple[State, TransactionFailedError | None]:
    """Like `apply`, but a transaction the state refuses uses up its sequence number and
    nothing else: returns (state, the refusal)."""
    try:
        return apply(state, stx), None
    except TransactionFailedError as failure:
        return _use_slot(state, stx.tx.sender, stx.tx.seq, state.account(stx.tx.sender)), failure


def void(state: State, sender: PeerId, seq: int) -> State:
    """The state after slot (sender, seq) is voided by an equivocation: the slot is used up
    and the genesis share of the sender's bonded and unbonding stake is burned."""
    account = state.account(sender)
    if seq <= account.seq:
        raise StaleSequenceError(f"{sender.short} already used sequence {seq}")
    if seq > account.seq + 1:
        raise SequenceGapError(f"{sender.short} is at {account.seq}, voided slot is {seq}")
    slashed, burned = _slash(account, state.params.slashing.equivocation_ppm)
    slashed = Account(slashed.seq, slashed.balance, slashed.bonded, slashed.unbonding,
                      slashed.epoch, slashed.equivocations + 1, slashed.faults)
    state = _use_slot(state, sender, seq, slashed)
    return _replace(state, burned=state.burned + burned)


def fault(state: State, offender: PeerId, after_seq: int) -> State:
    """The state after one proven wrong result of `offender`, taken right after its
    transaction `after_seq` (which must be its last): the genesis share of its bonded and
    unbonding stake is burned and its fault count grows. Raises SequenceGapError before that
    point, StaleSequenceError after it (the Ledger replays from a checkpoint then)."""
    account = state.account(offender)
    if after_seq > account.seq:
        raise SequenceGapError(f"{offender.short} is at {account.seq}, fault is after "
                               f"{after_seq}")
    if after_seq < account.seq:
        raise StaleSequenceError(f"{offender.short} is past {after_seq} (at {account.seq})")
    slashed, burned = _slash(account, state.params.slashing.wrong_result_ppm)
    slashed = Account(slashed.seq, slashed.balance, slashed.bonded, slashed.unbonding,
                      slashed.epoch, slashed.equivocations, slashed.faults + 1)
    state = _replace(state, accounts=state.accounts.set(offender, slashed))
    return _replace(state, burned=state.burned + burned)


def _slash(account: Account, ppm: int) -> tuple[Account, int]:
    """`account` with `ppm` of its bonded and of each unbonding amount burned, and the burn."""
    bonded_burn = account.bonded * ppm // PPM
    unbonding = tuple((release, amount - amount * ppm // PPM)
                      for release, amount in account.unbonding)
    burned = bonded_burn + account.unbonding_total - sum(a for _, a in unbonding)
    return Account(account.seq, account.balance, account.bonded - bonded_burn,
                   tuple(u for u in unbonding if u[1] > 0), account.epoch,
                   account.equivocations, account.faults), burned


def _use_slot(state: State, sender: PeerId, seq: int, account: Account) -> State:
    account = Account(seq, account.balance, account.bonded, account.unbonding, account.epoch,
                      account.equivocations, account.faults)
    new = _replace(state, accounts=state.accounts.set(sender, account))
    if sender == state.params.timekeeper:
        new = _replace(new, epoch=seq)
    return new


def _execute(state: State, tx: Transaction) -> State:
    sender = tx.sender
    account = state.account(sender)
    epoch = max(account.epoch, tx.epoch)
    balance, bonded, unbonding = account.balance, account.bonded, account.unbonding

    # Stake whose unbonding delay has passed (by the sender's own declared epoch) is released.
    released = 0
    while released < len(unbonding) and unbonding[released][0] <= epoch:
        balance += unbonding[released][1]
        released += 1
    unbonding = unbonding[released:]

    pending, channels = state.pending, state.channels
    for ack in tx.acks:
        key = (ack.source, sender)
        credits = pending.get(key)
        if credits is None:
            continue
        taken = [(seq, credit) for seq, credit in credits.items() if seq <= ack.seq]
        if not taken:
            continue
        if len(taken) == len(credits):
            pending = pending.delete(key)
        else:
            with credits.mutate() as left:
                for seq, _ in taken:
                    del left[seq]
                pending = pending.set(key, left.finish())
        for _, credit in taken:
            if credit.deposit:
                channel = channels.get(key) or Channel()
                channels = channels.set(key, Channel(channel.deposited + credit.amount,
                                                     channel.claimed))
            else:
                balance += credit.amount

    body = tx.body
    reputation, minted, new_epoch = state.reputation, state.minted, state.epoch
    if isinstance(body, Transfer | Deposit):
        if body.amount > balance:
            raise OverdraftError(f"{sender.short} spends {body.amount} of a spendable {balance}")
        balance -= body.amount
        if isinstance(body, Transfer):
            pending = _credit(pending, sender, body.to, tx.seq, Credit(body.amount))
        else:
            pending = _credit(pending, sender, body.payee, tx.seq, Credit(body.amount, True))
    elif isinstance(body, Bond):
        if body.amount > balance:
            raise OverdraftError(f"{sender.short} bonds {body.amount} of a spendable {balance}")
        balance -= body.amount
        bonded += body.amount
    elif isinstance(body, Unbond):
        if body.amount > bonded:
            raise InsufficientStakeError(f"{sender.short} unbonds {body.amount} of {bonded}")
        bonded -= body.amount
        unbonding = (*unbonding, (epoch + state.params.unbonding_epochs, body.amount))
    elif isinstance(body, Claim):
        receipt = body.receipt
        key = (receipt.payer, sender)
        channel = channels.get(key) or Channel()
        if receipt.cumulative <= channel.claimed:
            raise AlreadyClaimedError(f"receipt for {receipt.cumulative} from "
                                      f"{receipt.payer.short}: {channel.claimed} already paid")
        payable = min(receipt.cumulative, channel.deposited)
        if payable <= channel.claimed:
            raise NoDepositError(f"{receipt.payer.short} has no unpaid deposit for "
                                 f"{sender.short} ({channel.deposited} deposited, all paid)")
        balance += payable - channel.claimed
        channels = channels.set(key, Channel(channel.deposited, payable))
    else:
        outcome = rewards(state.params, state.genesis_supply + state.minted, body.reports,
                          state.reputation)
        for worker, amount in outcome.mints:
            pending = _credit(pending, sender, worker, tx.seq, Credit(amount))
        with reputation.mutate() as changed:
            for worker, value in outcome.reputation:
                changed[worker] = value
            reputation = changed.finish()
        minted += outcome.total
        new_epoch = tx.seq

    account = Account(tx.seq, balance, bonded, unbonding, epoch, account.equivocations,
                      account.faults)
    return State(state.params, state.chain, state.genesis_supply,
                 state.accounts.set(sender, account), pending, channels, reputation,
                 new_epoch, minted, state.burned)


def _credit(pending: immutables.Map[tuple[PeerId, PeerId], immutables.Map[int, Credit]],
            source: PeerId, recipient: PeerId, seq: int,
            credit: Credit) -> immutables.Map[tuple[PeerId, PeerId], immutables.Map[int, Credit]]:
    key = (source, recipient)
    credits = pending.get(key) or immutables.Map()
    return pending.set(key, credits.set(seq, credit))


def _replace(state: State, *, accounts: immutables.Map[PeerId, Account] | None = None,
             epoch: int | None = None, burned: int | None = None) -> State:
    return State(state.params, state.chain, state.genesis_supply,
                 state.accounts if accounts is None else accounts, state.pending,
                 state.channels, state.reputation, state.epoch if epoch is None else epoch,
                 state.minted, state.burned if burned is None else burned)
