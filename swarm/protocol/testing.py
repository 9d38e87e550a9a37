"""Fakes for tests and the simulator: the in-memory gossip network (as `trio.testing`).

`MemoryNetwork` joins any number of `MemoryGossip` hosts in one process, with a seeded
overlay, a route hook (drop, delay, duplicate, reorder) and partitions.
"""

from swarm.protocol._memory import (
    MAX_MESSAGE_BYTES,
    HostStats,
    MemoryGossip,
    MemoryNetwork,
    Route,
    RouteDecision,
    combine,
    duplicating,
    fixed_delay,
    lognormal_delay,
    lossy,
    uniform_delay,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "HostStats",
    "MemoryGossip",
    "MemoryNetwork",
    "Route",
    "RouteDecision",
    "combine",
    "duplicating",
    "fixed_delay",
    "lognormal_delay",
    "lossy",
    "uniform_delay",
]
