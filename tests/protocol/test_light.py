"""LightPeer.settle: waits on the peer's clock, so a FakeClock runs it without real waiting."""

from __future__ import annotations

from swarm._clock import FakeClock
from swarm._types import Digest
from swarm.protocol import ADVERT_TOPIC, Advert, Gossip, Identity, LightPeer, ModelOffer, _advert
from swarm.protocol.testing import MemoryNetwork
from tests.waiting import wait_until


def light_peer(network: MemoryNetwork, clock: FakeClock) -> LightPeer:
    async def start(identity: Identity) -> Gossip:
        return network.join(identity.peer_id)

    return LightPeer(start, clock=clock)


async def test_settle_on_an_empty_swarm_gives_up_at_the_timeout() -> None:
    clock = FakeClock(autojump=True)
    async with light_peer(MemoryNetwork(seed=1), clock) as peer:
        started = clock.monotonic()
        view = await peer.settle(timeout=30.0)
        assert len(view) == 0
        assert 30.0 <= clock.monotonic() - started < 30.2  # nobody appeared: the whole timeout


async def test_settle_returns_once_no_new_peer_appeared_for_quiet_seconds() -> None:
    network = MemoryNetwork(seed=2)
    clock = FakeClock(autojump=True)
    provider = Identity.generate()
    gossip = network.join(provider.peer_id)
    async with light_peer(network, clock) as peer:
        network.link(provider.peer_id, peer.identity.peer_id)
        advert = Advert(provider.peer_id, ("127.0.0.1:1",),
                        (ModelOffer(Digest.of(b"m"), "test/m", max_batch_size=8),),
                        sequence=1, timestamp=clock.time(), ttl=60.0)
        await gossip.publish(ADVERT_TOPIC, _advert.encode(advert, provider))
        await wait_until(lambda: provider.peer_id in peer.view, what="the provider's advert")
        started = clock.monotonic()
        view = await peer.settle(timeout=30.0, quiet=1.5)
        assert [e.peer_id for e in view] == [provider.peer_id]
        assert 1.5 <= clock.monotonic() - started < 1.7  # quiet, not the timeout
