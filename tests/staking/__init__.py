"""Helpers for the staking tests: fixed identities, a genesis, and wallets that sign."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swarm._types import PeerId
from swarm.protocol import Identity
from swarm.staking import (
    Ack,
    Body,
    Genesis,
    GenesisAccount,
    Params,
    SignedTransaction,
    SlashingTable,
    State,
    Tick,
    Transaction,
    WorkReport,
    sign,
)

# Deterministic keys: the same peers in every run.
USERS = tuple(Identity.from_seed(bytes([i]) * 32) for i in range(1, 7))
TIMEKEEPER = Identity.from_seed(b"\x7f" * 32)


def make_genesis(balances: Mapping[int, int] | None = None,
                 bonded: Mapping[int, int] | None = None, *, slash_ppm: int = 500_000,
                 unbonding_epochs: int = 2, inflation_ppm: int = 0) -> Genesis:
    """Users 0..5 with the given balances and stakes (default: 1000 each, nothing bonded)."""
    balances = {i: 1000 for i in range(len(USERS))} if balances is None else balances
    bonded = bonded or {}
    params = Params(name="test", timekeeper=TIMEKEEPER.peer_id,
                    unbonding_epochs=unbonding_epochs,
                    slashing=SlashingTable(equivocation_ppm=slash_ppm),
                    inflation_ppm=inflation_ppm)
    users = set(balances) | set(bonded)
    return Genesis(params, tuple(
        GenesisAccount(USERS[i].peer_id, balances.get(i, 0), bonded.get(i, 0)) for i in users))


@dataclass
class Wallet:
    """Signs one account's transactions with consecutive sequence numbers."""

    identity: Identity
    chain: bytes
    seq: int = 0
    made: dict[int, SignedTransaction] = field(default_factory=dict)

    @property
    def peer(self) -> PeerId:
        return self.identity.peer_id

    def make(self, body: Body, *, acks: Iterable[tuple[PeerId, int]] = (), epoch: int = 0,
             seq: int | None = None) -> SignedTransaction:
        """The next transaction (or one at an explicit `seq`, to equivocate)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        stx = sign(Transaction(self.chain, self.peer, seq, body, epoch,
                               tuple(Ack(p, s) for p, s in acks)), self.identity)
        self.made.setdefault(seq, stx)
        return stx


def wallets(genesis: Genesis) -> list[Wallet]:
    return [Wallet(identity, genesis.chain) for identity in USERS]


def tick(timekeeper: Wallet, reports: Iterable[WorkReport] = ()) -> SignedTransaction:
    """The timekeeper's next tick (its epoch field is the epoch it closes)."""
    return timekeeper.make(Tick(tuple(reports)), epoch=timekeeper.seq)


def check_invariants(state: State) -> None:
    """Conservation (holdings = genesis + minted - burned) and no negative amount."""
    assert state.holdings() == state.supply == state.genesis_supply + state.minted - state.burned
    for account in state.accounts.values():
        assert account.balance >= 0
        assert account.bonded >= 0
        assert all(amount > 0 for _, amount in account.unbonding)
    for credits in state.pending.values():
        assert credits
        assert all(c.amount > 0 for c in credits.values())
    for channel in state.channels.values():
        assert 0 <= channel.claimed <= channel.deposited
