"""The ledger state: a frozen value (immutables.Map inside), and its canonical encoding.

Every field is a function of the set of transactions applied, not of the order they came in
(see _apply): each account's fields change only by its own chain (and a slash at a slot of
its own chain), pending credits are keyed by who made them and where, and the global totals
are sums. The canonical encoding (sorted-key JSON) is what snapshots store and what tests
compare byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import immutables

from swarm._types import PeerId
from swarm.staking._errors import LedgerCorruptError
from swarm.staking._genesis import Genesis, Params

__all__ = ["Account", "Channel", "Credit", "State"]


@dataclass(frozen=True, slots=True)
class Credit:
    """Money one transaction sent another account, waiting for the recipient's ack."""

    amount: int
    # True: a deposit for the recipient's claims (acknowledged into their channel);
    # False: a transfer or a reward (acknowledged into the spendable balance).
    deposit: bool = False


@dataclass(frozen=True, slots=True)
class Account:
    # Last sequence number the account used (applied, failed or voided).
    seq: int = 0
    # Spendable: genesis + acknowledged credits + claims + released stake - what it spent.
    balance: int = 0
    # Stake that routing and verdicts weigh, and slashing burns from.
    bonded: int = 0
    # (release epoch, amount), in the order unbonded; still slashable until released.
    unbonding: tuple[tuple[int, int], ...] = ()
    # Highest epoch the account's own transactions declared (releases are judged by it).
    epoch: int = 0
    # Sequence numbers at which it signed two transactions (each one slashed once).
    equivocations: int = 0
    # Wrong results proven against it (each offence slashed once).
    faults: int = 0

    @property
    def unbonding_total(self) -> int:
        return sum(amount for _, amount in self.unbonding)


@dataclass(frozen=True, slots=True)
class Channel:
    """What a payer deposited for a payee (acknowledged by the payee) and what was paid."""

    deposited: int = 0
    # Highest receipt total paid so far; a receipt pays only what it adds to this.
    claimed: int = 0

    @property
    def available(self) -> int:
        return self.deposited - self.claimed


_EMPTY: immutables.Map[Any, Any] = immutables.Map()


@dataclass(frozen=True, slots=True)
class State:
    """The whole ledger at one point. Build with `State.genesis(genesis)`; step with
    swarm.staking.apply or settle."""

    params: Params
    chain: bytes
    genesis_supply: int
    accounts: immutables.Map[PeerId, Account] = field(default=_EMPTY)
    # (source, recipient) -> source's sequence number -> credit, until the recipient acks it.
    pending: immutables.Map[tuple[PeerId, PeerId], immutables.Map[int, Credit]] = \
        field(default=_EMPTY)
    # (payer, payee) -> channel.
    channels: immutables.Map[tuple[PeerId, PeerId], Channel] = field(default=_EMPTY)
    # Reliability-weighted reputation (ppm) of every worker a tick has reported.
    reputation: immutables.Map[PeerId, int] = field(default=_EMPTY)
    # Current epoch: the timekeeper's last sequence number.
    epoch: int = 0
    minted: int = 0
    burned: int = 0

    @classmethod
    def genesis(cls, genesis: Genesis) -> State:
        accounts = immutables.Map({
            a.peer: Account(balance=a.balance, bonded=a.bonded) for a in genesis.accounts})
        return cls(genesis.params, genesis.chain, genesis.supply, accounts)

    def account(self, peer: PeerId) -> Account:
        return self.accounts.get(peer) or _NOBODY

    def reputation_of(self, peer: PeerId) -> int:
        """Reputation (ppm) of `peer` as ticks reported it, less the genesis penalty for each
        proven wrong result (derived here, not stored: faults and ticks are not ordered
        against each other, and a difference of two sums does not care about order)."""
        base = self.reputation.get(peer, self.params.initial_reputation_ppm)
        penalty = self.account(peer).faults * self.params.slashing.wrong_result_reputation_ppm
        return max(0, base - penalty)

    def stake(self, peer: PeerId) -> int:
        """Bonded stake of `peer` (what routing weighs)."""
        return self.account(peer).bonded

    def channel(self, payer: PeerId, payee: PeerId) -> Channel:
        return self.channels.get((payer, payee)) or _NO_CHANNEL

    def pending_for(self, recipient: PeerId) -> Iterator[tuple[PeerId, int, Credit]]:
        """Credits waiting for `recipient`'s ack: (source, source seq, credit); O(pending)."""
        for (source, to), credits in self.pending.items():
            if to == recipient:
                for seq, credit in credits.items():
                    yield source, seq, credit

    @property
    def supply(self) -> int:
        """Genesis supply plus minted rewards minus slashing burns."""
        return self.genesis_supply + self.minted - self.burned

    def holdings(self) -> int:
        """Everything held anywhere: balances, stake, pending credits, unpaid deposits.
        Equal to `supply` in every reachable state (the conservation law tests check)."""
        total = sum(a.balance + a.bonded + a.unbonding_total for a in self.accounts.values())
        total += sum(c.amount for credits in self.pending.values() for c in credits.values())
        return total + sum(c.available for c in self.channels.values())

    def encode(self) -> bytes:
        """Canonical bytes: equal states, however reached, encode identically."""
        doc = {
            "chain": self.chain.hex(), "genesis_supply": self.genesis_supply,
            "epoch": self.epoch, "minted": self.minted, "burned": self.burned,
            "accounts": sorted(
                [p.value, a.seq, a.balance, a.bonded, [list(u) for u in a.unbonding], a.epoch,
                 a.equivocations, a.faults] for p, a in self.accounts.items()),
            "pending": sorted(
                [s.value, r.value, sorted([q, c.amount, c.deposit] for q, c in credits.items())]
                for (s, r), credits in self.pending.items()),
            "channels": sorted([p.value, q.value, c.deposited, c.claimed]
                               for (p, q), c in self.channels.items()),
            "reputation": sorted([p.value, v] for p, v in self.reputation.items()),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, genesis: Genesis) -> State:
        """The state `encode` wrote (LedgerCorruptError if it is not one of this genesis)."""
        try:
            doc = json.loads(data)
            if bytes.fromhex(doc["chain"]) != genesis.chain:
                raise LedgerCorruptError("snapshot belongs to another genesis")
            accounts: immutables.Map[PeerId, Account] = immutables.Map({
                PeerId(p): Account(seq, bal, bonded, tuple((r, a) for r, a in unb), ep, eq, f)
                for p, seq, bal, bonded, unb, ep, eq, f in doc["accounts"]})
            pending: immutables.Map[tuple[PeerId, PeerId], immutables.Map[int, Credit]] = \
                immutables.Map({
                    (PeerId(s), PeerId(r)): immutables.Map({q: Credit(a, d) for q, a, d in cs})
                    for s, r, cs in doc["pending"]})
            channels: immutables.Map[tuple[PeerId, PeerId], Channel] = immutables.Map({
                (PeerId(p), PeerId(q)): Channel(d, c) for p, q, d, c in doc["channels"]})
            reputation: immutables.Map[PeerId, int] = immutables.Map(
                {PeerId(p): v for p, v in doc["reputation"]})
            state = cls(genesis.params, genesis.chain, doc["genesis_supply"], accounts, pending,
                        channels, reputation, doc["epoch"], doc["minted"], doc["burned"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerCorruptError(f"not a ledger snapshot: {exc}") from exc
        if state.encode() != data:
            raise LedgerCorruptError("snapshot is not in canonical form")
        return state


_NOBODY = Account()
_NO_CHANNEL = Channel()
