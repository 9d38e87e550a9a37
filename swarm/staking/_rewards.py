"""Per-epoch rewards: the only way money is minted. A pure function of the genesis rule, the
supply base, the tick's work reports and the reputation before the tick.

With rates in parts per million (PPM = 10**6), `alpha` = reputation_alpha_ppm:

    pool          = base_supply * inflation_ppm // PPM          (base = genesis + minted)
    reliability_w = served_w * PPM // (served_w + failed_w)      (a worker with no requests
                                                                  keeps its reputation)
    reputation_w' = (reputation_w * (PPM - alpha) + reliability_w * alpha) // PPM
    weight_w      = served_w * reputation_w'
    mint_w        = pool * weight_w // sum(weight)               (rounded down)

So the pool is split by served work weighted by reliability: a worker that failed half its
requests earns less per request than one that failed none, and a history of failures keeps
weighing for a while (the EWMA). Rounding down means slightly less than the pool may be
minted, never more. The base excludes burns on purpose: burns happen at offenders' slots,
which are not ordered against ticks, so a base that counted them would let the arrival order
decide the mint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from swarm._types import PeerId
from swarm.staking._genesis import MAX_SUPPLY, PPM, Params
from swarm.staking._tx import WorkReport

__all__ = ["Rewards", "rewards"]

# Minting stops short of the wire format's limit (amounts are below 2**63).
_SUPPLY_CAP = 2 * MAX_SUPPLY - 1


@dataclass(frozen=True, slots=True)
class Rewards:
    """What one tick mints, and the reputations it sets."""

    # (worker, amount > 0), sorted by peer id.
    mints: tuple[tuple[PeerId, int], ...]
    # (worker, reputation ppm) for every reported worker, sorted by peer id.
    reputation: tuple[tuple[PeerId, int], ...]

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.mints)


def rewards(params: Params, base_supply: int, reports: Sequence[WorkReport],
            reputation: Mapping[PeerId, int]) -> Rewards:
    """The mint and reputations of one epoch (formula in the module docstring)."""
    pool = min(base_supply * params.inflation_ppm // PPM, max(0, _SUPPLY_CAP - base_supply))
    alpha = params.reputation_alpha_ppm
    new_reputation: dict[PeerId, int] = {}
    weights: dict[PeerId, int] = {}
    for report in reports:
        old = reputation.get(report.worker, params.initial_reputation_ppm)
        done = report.served + report.failed
        if done == 0:
            new = old  # no requests: no evidence either way
        else:
            reliability = report.served * PPM // done
            new = (old * (PPM - alpha) + reliability * alpha) // PPM
        new_reputation[report.worker] = new
        weights[report.worker] = report.served * new
    total_weight = sum(weights.values())
    mints: list[tuple[PeerId, int]] = []
    if pool > 0 and total_weight > 0:
        for worker, weight in weights.items():
            amount = pool * weight // total_weight
            if amount > 0:
                mints.append((worker, amount))
    return Rewards(tuple(sorted(mints, key=lambda m: m[0].value)),
                   tuple(sorted(new_reputation.items(), key=lambda r: r[0].value)))
