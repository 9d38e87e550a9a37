"""What a virtual-time run measured besides the request summary: load spread, gossip, views.

Pure data and arithmetic; swarm/simnet/_virtual.py fills them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LoadSpread", "VirtualStats", "gini", "load_spread"]


@dataclass(frozen=True, slots=True)
class LoadSpread:
    """How evenly the successful requests spread over the providers."""

    # Gini coefficient of requests per provider (0: all equal; 1: one took everything),
    # over every provider, idle ones included.
    gini: float
    # Busiest provider's requests over the mean.
    max_over_mean: float
    # Providers that answered at least one request.
    used: int
    # Share of the requests answered by the fastest and the slowest quarter of providers.
    fastest_quarter: float
    slowest_quarter: float


@dataclass(frozen=True, slots=True)
class VirtualStats:
    """What a virtual-time run measured besides the request summary."""

    providers: int
    clients: int
    # Virtual seconds simulated (warm-up and drain included), wall and CPU seconds it took.
    virtual_s: float
    wall_s: float
    cpu_s: float
    # Event-loop callbacks run (timers, task steps, message deliveries) and per wall second.
    events: int
    events_per_wall_s: float
    # Virtual seconds from the last provider's join until every client's view held every
    # provider (None: some client never got there).
    convergence_s: float | None
    # Adverts published by all providers.
    adverts: int
    # Gossip per node per second (virtual), sent + received: messages and bytes.
    provider_msgs_per_s: float
    provider_bytes_per_s: float
    client_msgs_per_s: float
    client_bytes_per_s: float
    load: LoadSpread
    # Over the samples of the run: the lowest share of live providers in a client's view,
    # and the most entries of providers that were down.
    min_view_completeness: float
    max_stale_entries: int
    # Second copies the clients' Routers sent because the first was slow.
    hedges: int
    # Batches the providers executed: how many of each size (items per batch).
    batch_sizes: Mapping[int, int]
    # First attempts the clients' Routers sent to explore (SchedulerConfig.explore).
    explorations: int = 0
    # Attempts providers refused past their admission bound (swarm.scheduler.admits).
    refusals: int = 0

    @property
    def mean_batch(self) -> float:
        """Items per executed batch, on average (0 when none ran)."""
        batches = sum(self.batch_sizes.values())
        return (sum(k * v for k, v in self.batch_sizes.items()) / batches) if batches else 0.0


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values (0 when all are equal or all are zero)."""
    ordered = sorted(values)
    n, total = len(ordered), sum(ordered)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * weighted) / (n * total) - (n + 1) / n


def load_spread(counts: Sequence[int], slowness: Sequence[float]) -> LoadSpread:
    """Spread of `counts` (requests per provider) and how it follows `slowness`."""
    n = len(counts)
    total = sum(counts)
    mean = total / n if n else 0.0
    by_speed = sorted(range(n), key=lambda i: (slowness[i], i))
    quarter = max(1, n // 4)

    def share(ids: Sequence[int]) -> float:
        return sum(counts[i] for i in ids) / total if total else 0.0

    return LoadSpread(
        gini=gini(counts), max_over_mean=max(counts) / mean if mean else 0.0,
        used=sum(1 for c in counts if c), fastest_quarter=share(by_speed[:quarter]),
        slowest_quarter=share(by_speed[-quarter:]))
