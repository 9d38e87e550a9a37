"""Autoscaling in the virtual-time simulator: the production driver on simulated providers.

Every provider of a group with `autoscale = true` runs the node's own `Autoscaler`
(swarm.node), which calls the production `swarm.autoscale.decide` every interval on
the virtual clock. What is simulated is the host under it (`VirtualHost`):

- the view: a provider reads the view of one of the simulated clients (providers
  publish adverts but subscribe to none, swarm/simnet/_virtual.py says why); that
  view is a real PeerView built by Membership from the providers' signed adverts,
  which carry the demand signal measured by each provider's simulated queues;
- a load takes `model_load_s` virtual seconds (pull + load + warm-up), then the
  provider serves the version and advertises it (an "autoscaled" offer);
- an unload stops advertising the version, waits `linger` seconds for clients'
  views, then refuses new requests for it while what it queued finishes.

Providers advertise the versions they serve as stored (every replica is a registry
holder), so a new replica always has a peer to pull from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from swarm._clock import Clock
from swarm._errors import UnavailableError
from swarm._types import Digest, PeerId
from swarm.protocol import Advert, PeerView
from swarm.simnet._virtual_provider import VirtualProvider

__all__ = ["VirtualHost", "replicas_of"]


class VirtualHost:
    """A simulated provider as the autoscaling driver's AutoscaleHost."""

    def __init__(self, provider: VirtualProvider, view: Callable[[], PeerView], clock: Clock,
                 *, load_seconds: float, linger: float) -> None:
        self._provider = provider
        self._view = view
        self._clock = clock
        self._load_seconds = load_seconds
        self._linger = linger

    def view(self) -> PeerView:
        return self._view()

    def counts(self) -> Callable[[PeerId], bool] | None:
        return None

    def own_advert(self) -> Advert | None:
        p = self._provider
        return p.advert() if p.state == VirtualProvider.UP else None

    def memory_used(self) -> int:
        return 0

    async def load(self, digest: Digest, name: str) -> None:
        await self._clock.sleep(self._load_seconds)
        p = self._provider
        if p.state != VirtualProvider.UP:
            raise UnavailableError(f"provider {p.index} is not serving")
        p.add_model(digest)

    async def unload(self, digest: Digest, name: str) -> None:
        p = self._provider
        p.release(digest)
        await self._clock.sleep(self._linger)
        p.remove_model(digest)


def replicas_of(providers: list[VirtualProvider], digest: Digest) -> int:
    """Providers up that serve `digest` and advertise it (ground truth, not a view)."""
    key = str(digest)
    return sum(1 for p in providers
               if p.state == VirtualProvider.UP and key in p.queues and digest not in p.releasing)


async def sample_every(interval: float, sample: Callable[[], None]) -> None:
    """Call `sample` every `interval` seconds (virtual) until cancelled."""
    while True:
        sample()
        await asyncio.sleep(interval)
