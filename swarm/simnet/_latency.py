"""The simulated network's delays: one-way latency per pair of peers, for requests and gossip.

Every peer (provider or client) has an index; a pair's typical one-way delay is drawn
once from a lognormal, and each request message is jittered around it. Gossip hops
take the pair's typical delay unjittered (one routing decision per pair, made once:
a million hops a minute at 2,000 providers) and may be lost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from swarm._types import PeerId
from swarm.protocol import GossipMessage
from swarm.protocol.testing import Route, RouteDecision

__all__ = ["Latency", "gossip_route"]

_DROP = RouteDecision(drop=True)


class Latency:
    """One-way delays: a lognormal base per ordered pair of peers (drawn once), jittered."""

    __slots__ = ("_base", "_jitter", "_mu", "_rng", "_sigma")

    def __init__(self, rng: random.Random, median: float, sigma: float, jitter: float) -> None:
        self._rng = rng
        self._mu = math.log(median)
        self._sigma = sigma
        self._jitter = jitter
        self._base: dict[int, float] = {}

    def base(self, a: int, b: int) -> float:
        """The typical one-way delay from peer `a` to peer `b` (seconds)."""
        key = a << 20 | b
        base = self._base.get(key)
        if base is None:
            base = self._base[key] = self._rng.lognormvariate(self._mu, self._sigma)
        return base

    def one_way(self, a: int, b: int, rng: random.Random) -> float:
        """One message's delay from `a` to `b`: the pair's base, jittered."""
        base = self.base(a, b)
        return base * rng.lognormvariate(0.0, self._jitter) if self._jitter else base


def gossip_route(latency: Latency, index_of: Mapping[PeerId, int], loss: float) -> Route:
    """The MemoryNetwork route of gossip: the pair's base delay, a `loss` share dropped."""
    decisions: dict[tuple[str, str], RouteDecision] = {}

    def route(src: PeerId, dst: PeerId, msg: GossipMessage,
              rng: random.Random) -> RouteDecision:
        if loss and rng.random() < loss:
            return _DROP
        key = (src.value, dst.value)
        decision = decisions.get(key)
        if decision is None:
            decision = decisions[key] = RouteDecision(
                delay=latency.base(index_of[src], index_of[dst]))
        return decision

    return route
