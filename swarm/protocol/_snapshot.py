"""SnapshotPuller: push-pull on join — pull a topic's snapshot from every peer we connect to.

Gossip has no memory: a peer that joins hears each advert only when its author next
publishes (every few seconds), and tag records only when they move. So each component
that serves a snapshot (`Gossip.set_snapshot`) also runs a puller: it pulls the topic
from each peer as soon as a connection to it is up (on start, and on every new or
renewed connection), and hands the items the topic's validator accepted to the
component, as if they had come by gossip. `synced` is set once the peers connected at
the first look have all answered (at least one with a snapshot): from then on the
component holds what they held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from swarm._errors import SwarmError
from swarm._types import PeerId
from swarm.protocol._gossip import Gossip, GossipMessage

__all__ = ["SnapshotPuller"]

log = logging.getLogger("swarm.protocol")

# Seconds between looks for new connections until the first pull succeeded: a joining
# peer's first view waits on this, a settled one looks every `interval`.
_JOIN_POLL = 0.02
# Pulls in flight at once (a node that many peers dial at once pulls a few at a time).
_CONCURRENT_PULLS = 4
# A failed pull (busy peer, one that is still starting) is tried again after this many
# seconds, doubling up to the max, while the connection lasts.
_RETRY_FIRST = 1.0
_RETRY_MAX = 60.0


class SnapshotPuller:
    """`await puller.run()` pulls `topic` from each newly connected peer until cancelled.

    `synced` is set after the first round of pulls in which one succeeded.

    `receive(msg)` gets every accepted item, in the serving peer's order. Counters:
    pulls (successful), pull_failures, pulled_items (accepted ones).
    """

    def __init__(self, gossip: Gossip, topic: str, receive: Callable[[GossipMessage], object],
                 *, interval: float) -> None:
        self._gossip = gossip
        self._topic = topic
        self._receive = receive
        self._interval = interval
        self._gate = asyncio.Semaphore(_CONCURRENT_PULLS)
        self.synced = asyncio.Event()
        self.counters = {"pulls": 0, "pull_failures": 0, "pulled_items": 0}

    async def pull_from(self, peer: PeerId) -> bool:
        """Pull `peer`'s snapshot now and hand it over; False when the pull failed."""
        async with self._gate:
            try:
                items = await self._gossip.pull(self._topic, peer)
            except (SwarmError, OSError) as exc:  # a peer that left, or serves none: routine
                self.counters["pull_failures"] += 1
                log.debug("snapshot pull failed", extra={
                    "topic": self._topic, "peer": peer.short, "error": str(exc)[:200]})
                return False
        for msg in items:
            self._receive(msg)
        self.counters["pulls"] += 1
        self.counters["pulled_items"] += len(items)
        log.debug("snapshot pulled", extra={"topic": self._topic, "peer": peer.short,
                                            "items": len(items)})
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pulled: set[PeerId] = set()
        retry: dict[PeerId, tuple[float, float]] = {}  # peer -> (when, next backoff)
        while True:
            connected = self._gossip.connected_peers()
            live = set(connected)
            pulled &= live  # a peer that comes back is pulled again
            retry = {p: r for p, r in retry.items() if p in live}
            now = loop.time()
            due = [p for p in connected if p not in pulled
                   or (p in retry and retry[p][0] <= now)]
            if due:
                pulled.update(due)
                done = await asyncio.gather(*(self.pull_from(p) for p in due))
                if any(done):
                    # Every peer we were connected to has answered: a joiner's first view
                    # is the union of theirs, not whichever came back first.
                    self.synced.set()
                for peer, ok in zip(due, done, strict=True):
                    if ok:
                        retry.pop(peer, None)
                    else:
                        backoff = retry[peer][1] if peer in retry else _RETRY_FIRST
                        retry[peer] = (loop.time() + backoff, min(2 * backoff, _RETRY_MAX))
            await asyncio.sleep(self._interval if self.synced.is_set() else
                                min(self._interval, _JOIN_POLL))
