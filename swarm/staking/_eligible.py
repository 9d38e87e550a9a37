"""Who routing may send work to, from the ledger alone: the one rule the node, the SDK and the
simulator all call (so a slash excludes a provider everywhere alike)."""

from __future__ import annotations

from swarm._types import PeerId
from swarm.staking._state import State

__all__ = ["eligible"]


def eligible(state: State, peer: PeerId, min_stake: int) -> bool:
    """True when `peer` has at least `min_stake` bonded and no proven offence.

    An equivocating account is excluded for good: it proved it signs conflicting
    statements, so nothing it signs can be taken as evidence or as work. So is one with a
    proven wrong result: it signed outputs two other providers contradicted."""
    account = state.account(peer)
    return account.bonded >= min_stake and account.equivocations == 0 and account.faults == 0
