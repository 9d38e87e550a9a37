"""Supply and demand per model, from a node's peer view and its own offers (pure)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from swarm._types import Digest, PeerId
from swarm.protocol import Advert, ModelOffer, PeerView

__all__ = ["ModelDemand", "replica_load", "supply_and_demand"]


# Utilization from which a provider counts as saturated: its utilization no longer
# says how much more work there is.
SATURATED = 0.9
# A provider with a backlog counts as at least this many replicas' worth.
BACKLOG = 1.5


def replica_load(offer: ModelOffer, cap: float, target_queue_wait: float = 0.5) -> float:
    """How many replicas' worth of work one provider's model sees (1.0 = saturated).

    Its measured utilization (the share of time its model executes). Once saturated
    (utilization >= SATURATED) or backlogged (requests wait longer than
    `target_queue_wait`), at least its arrival rate over its throughput (arrivals
    beyond what it executes); and backlogged, at least BACKLOG: a node whose time goes
    to serving requests rather than executing them (a CPU node decoding gRPC) never
    looks busy by utilization, and when clients bound their requests in flight its
    arrivals match what it executes, so the backlog is the signal. It says "more",
    not how many more: the next round measures again. Below that, the throughput of
    small batches understates capacity, so arrivals over throughput would overstate
    load: utilization alone counts. Capped at `cap`: one advert (hostile input) moves a
    model's demand by at most `cap` replicas.
    """
    load = offer.utilization
    backlog = 0 < target_queue_wait < offer.queue_wait
    if load >= SATURATED or backlog:
        if offer.items_per_second > 0:
            load = max(load, offer.arrival_rate / offer.items_per_second)
        if backlog:
            load = max(load, BACKLOG)
    return min(load, cap)


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model version's supply (replicas) and demand, as one node sees them."""

    digest: Digest
    name: str
    # Providers serving it (not draining), this node included if it does.
    replicas: int
    # Sum of the providers' replica loads (replica_load): replicas' worth of busy work.
    load: float
    # Items/s arriving at its providers, in all.
    arrival_rate: float
    # Items/s its providers executed while busy (their measured throughput), in all.
    throughput: float
    # Worst mean queue wait among its providers (seconds).
    queue_wait: float
    # Median price per request its providers ask (micro-units): what serving it pays.
    price: float
    # Bytes its files take (largest any provider advertises; 0 = unknown).
    memory_bytes: int
    # Peers that store the registry version (where a new replica pulls it from).
    holders: int
    # Peers (this node included) that do not serve it and are not draining:
    # the nodes that may volunteer a replica.
    candidates: int
    # Peers whose autoscaler loaded it (those that may release a replica), by peer id.
    releasable: tuple[PeerId, ...] = ()

    @property
    def per_replica(self) -> float:
        return self.load / self.replicas if self.replicas else math.inf if self.load else 0.0

    def desired(self, target: float, min_replicas: int, max_rate: float = math.inf) -> int:
        """Replicas that bring the load per replica to `target` (Knative: load / target),
        at most `max_rate` times the replicas there are (Knative's max-scale-up-rate)."""
        want = math.ceil(self.load / target - 1e-9)
        if self.replicas and math.isfinite(max_rate):
            want = min(want, math.ceil(max_rate * self.replicas))
        return max(min_replicas, want)


def supply_and_demand(view: PeerView, own: Advert | None, *, max_replica_load: float = 4.0,
                      target_queue_wait: float = 0.5,
                      counts: Callable[[PeerId], bool] | None = None
                      ) -> dict[Digest, ModelDemand]:
    """Every model version offered in `view` (plus this node's `own` advert), with its demand.

    `own` is this node's current advert (the view does not hold it: own adverts are
    not admitted). Draining providers count for neither supply nor candidates. With
    `counts` (staking: eligible on this node's ledger), the adverts of peers it refuses
    count for nothing: identities are free, so demand that anyone can claim under a
    thousand names would otherwise move every node's capacity where an attacker wants.
    """
    # One pass over the view for what every peer contributes (cheap attribute reads:
    # every node runs this every interval, over views of thousands of peers); the
    # offers come from the view's digest index.
    own_id = own.peer_id if own is not None else None
    live = 0
    stored: dict[Digest, int] = {}
    for entry in view.entries.values():
        advert = entry.advert
        if advert.peer_id == own_id or (counts is not None and not counts(advert.peer_id)):
            continue
        live += not advert.draining
        for digest in advert.stored:
            stored[digest] = stored.get(digest, 0) + 1
    offers: dict[Digest, list[tuple[Advert, ModelOffer]]] = {}
    for digest, peers in view.by_digest.items():
        for peer in peers:
            advert = view.entries[peer].advert
            offer = advert.offer(digest)
            if counts is not None and not counts(peer):
                continue
            if advert.peer_id != own_id and not advert.draining and offer is not None:
                offers.setdefault(digest, []).append((advert, offer))
    if own is not None:
        live += not own.draining
        for digest in own.stored:
            stored[digest] = stored.get(digest, 0) + 1
        if not own.draining:
            for offer in own.models:
                offers.setdefault(offer.digest, []).append((own, offer))
    return {digest: _demand(digest, served, live, stored.get(digest, 0), max_replica_load,
                            target_queue_wait)
            for digest, served in offers.items()}


def _demand(digest: Digest, served: Sequence[tuple[Advert, ModelOffer]], live: int,
            holders: int, cap: float, wait: float) -> ModelDemand:
    names = sorted(o.name for _, o in served)
    return ModelDemand(
        digest=digest,
        name=names[0],
        replicas=len(served),
        load=sum(replica_load(o, cap, wait) for _, o in served),
        arrival_rate=sum(o.arrival_rate for _, o in served),
        throughput=sum(o.items_per_second for _, o in served),
        queue_wait=max(o.queue_wait for _, o in served),
        price=float(statistics.median(a.price.per_request_micros for a, _ in served)),
        memory_bytes=max(o.memory_bytes for _, o in served),
        holders=holders,
        candidates=live - len(served),
        releasable=_sorted_peers(a.peer_id for a, o in served if o.autoscaled),
    )


def _sorted_peers(peers: Iterable[PeerId]) -> tuple[PeerId, ...]:
    return tuple(sorted(peers, key=lambda p: p.value))
