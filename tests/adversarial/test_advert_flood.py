"""Advert floods with fresh identities (issue 11 item 10).

Identities are free: the per-author rate limit does nothing against 150 authors with
one advert each. What bounds them: the budget of the peer that hands us adverts of
authors new to the view (`received_from`), the much smaller budget of a publisher that
publishes adverts it did not author (`source`), and the view's cap on untrusted
authors. Honest peers already in the view stay whatever the flood does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from swarm._clock import FakeClock
from swarm._types import Digest, PeerId
from swarm.protocol import (
    ADVERT_TOPIC,
    Advert,
    Gossip,
    Identity,
    Libp2pConfig,
    Libp2pGossip,
    Membership,
    MembershipConfig,
    ModelOffer,
    ViewPolicy,
    _advert,
)
from swarm.protocol.testing import MemoryNetwork
from tests.waiting import wait_until

FLOOD = 150
HONEST = 5


def signed_advert(identity: Identity, wall: float, name: str = "acme/fake") -> bytes:
    offer = ModelOffer(Digest.of(name.encode()), name, max_batch_size=8)
    return _advert.encode(Advert(identity.peer_id, ("127.0.0.1:1",), (offer,), sequence=1,
                                 timestamp=wall, ttl=60.0), identity)


class Victim:
    """An honest node's membership on a still FakeClock (no refills, no expiry)."""

    def __init__(self, gossip: Gossip, config: MembershipConfig) -> None:
        self.clock = FakeClock()
        self.marker = Identity.generate()
        self.membership = Membership(gossip, clock=self.clock, config=config,
                                     trust=self._trust)
        self.task: asyncio.Task[None] | None = None

    def _trust(self, peer: PeerId) -> float:
        return 1.0 if peer == self.marker.peer_id else 0.0

    def ids(self) -> set[PeerId]:
        return set(self.membership.view.entries) - {self.marker.peer_id}

    async def processed(self, publish: Callable[[bytes], object]) -> None:
        """Publish a trusted marker after the flood; once it is in, the flood was processed."""
        result = publish(signed_advert(self.marker, self.clock.time()))
        if asyncio.iscoroutine(result):
            await result
        await wait_until(lambda: self.marker.peer_id in self.membership.view, timeout=30,
                         what="the marker advert admitted")


async def honest_in_view(network: MemoryNetwork, victim: Victim) -> set[PeerId]:
    honest = [Identity.generate() for _ in range(HONEST)]
    for identity in honest:
        host = network.join(identity.peer_id)
        network.link(identity.peer_id, victim.membership.gossip.peer_id)
        await host.publish(ADVERT_TOPIC, signed_advert(identity, victim.clock.time()))
    ids = {i.peer_id for i in honest}
    await wait_until(lambda: victim.ids() == ids, what="the honest peers in the view")
    return ids


async def start_victim(network: MemoryNetwork, config: MembershipConfig) -> Victim:
    host = network.join(Identity.generate().peer_id)
    victim = Victim(host, config)
    victim.task = asyncio.create_task(victim.membership.run())
    await wait_until(lambda: host._subs.get(ADVERT_TOPIC), what="the advert subscription open")
    return victim


async def stop(victim: Victim) -> None:
    assert victim.task is not None
    victim.task.cancel()
    await asyncio.gather(victim.task, return_exceptions=True)


async def test_one_host_publishing_fresh_identities_adverts_gets_its_relay_budget() -> None:
    network = MemoryNetwork(seed=1, degree=0)
    victim = await start_victim(network, MembershipConfig(relay_burst=4))
    honest = await honest_in_view(network, victim)
    attacker = network.join(Identity.generate().peer_id)
    network.link(attacker.peer_id, victim.membership.gossip.peer_id)
    for _ in range(FLOOD):
        await attacker.publish(ADVERT_TOPIC, signed_advert(Identity.generate(),
                                                           victim.clock.time()))
    await network.settle()
    await victim.processed(lambda data: attacker.publish(ADVERT_TOPIC, data))
    grown = victim.ids() - honest
    assert honest <= victim.ids()
    assert len(grown) == 4, len(grown)
    assert victim.membership.counters["relay_limited"] == FLOOD - 4
    await stop(victim)


async def test_one_connection_forwarding_fresh_identities_gets_its_introduction_budget() -> None:
    # Each identity publishes its own advert (a valid publisher signature), all behind
    # one relay host, the victim's only link to them: one connection.
    network = MemoryNetwork(seed=2, degree=0)
    victim = await start_victim(network, MembershipConfig(introduce_burst=10))
    honest = await honest_in_view(network, victim)
    relay = network.join(Identity.generate().peer_id)
    network.link(relay.peer_id, victim.membership.gossip.peer_id)
    for _ in range(FLOOD):
        identity = Identity.generate()
        sybil = network.join(identity.peer_id)
        network.link(identity.peer_id, relay.peer_id)
        await sybil.publish(ADVERT_TOPIC, signed_advert(identity, victim.clock.time()))
    await network.settle()
    await victim.processed(lambda data: relay.publish(ADVERT_TOPIC, data))
    grown = victim.ids() - honest
    assert honest <= victim.ids()
    assert len(grown) == 10, len(grown)
    assert victim.membership.counters["introduce_limited"] == FLOOD - 10


async def test_fresh_identities_on_many_connections_stop_at_the_view_cap() -> None:
    network = MemoryNetwork(seed=3, degree=0)
    cap = HONEST + 20
    victim = await start_victim(network, MembershipConfig(
        view_policy=ViewPolicy(max_untrusted=cap)))
    honest = await honest_in_view(network, victim)
    for _ in range(FLOOD):
        identity = Identity.generate()
        sybil = network.join(identity.peer_id)
        network.link(identity.peer_id, victim.membership.gossip.peer_id)
        await sybil.publish(ADVERT_TOPIC, signed_advert(identity, victim.clock.time()))
    await network.settle()
    marker = network.join(victim.marker.peer_id)  # trusted: it gets in though the view is full
    network.link(marker.peer_id, victim.membership.gossip.peer_id)
    await victim.processed(lambda data: marker.publish(ADVERT_TOPIC, data))
    grown = victim.ids() - honest
    assert honest <= victim.ids()
    assert len(grown) == cap - HONEST, len(grown)
    assert victim.membership.view.untrusted == cap
    assert victim.membership.counters["view_full"] >= FLOOD - (cap - HONEST)
    await stop(victim)


async def test_one_libp2p_connection_with_150_fresh_identities_under_defaults() -> None:
    """The reported attack, over real libp2p with the default configuration."""
    victim_gossip = await Libp2pGossip.start(Identity.generate(), Libp2pConfig())
    honest_id = Identity.generate()
    honest = await Libp2pGossip.start(honest_id, Libp2pConfig(
        bootstrap=(victim_gossip.listen_addrs[0],)))
    attacker = await Libp2pGossip.start(Identity.generate(), Libp2pConfig(
        bootstrap=(victim_gossip.listen_addrs[0],)))
    victim = Victim(victim_gossip, MembershipConfig())
    victim.task = asyncio.create_task(victim.membership.run())
    try:
        await wait_until(lambda: len(victim_gossip.connected_peers()) == 2, timeout=10,
                         what="both peers connected to the victim")
        relay_budget = int(MembershipConfig().relay_burst)

        async def publish_until_heard(gossip: Libp2pGossip, data: bytes, peer: PeerId) -> None:
            async def heard() -> bool:  # the mesh may still be forming: publish again
                await gossip.publish(ADVERT_TOPIC, data)
                return peer in victim.membership.view
            await wait_until(heard, timeout=15, what=f"{peer.short} heard by the victim")

        await publish_until_heard(honest, signed_advert(honest_id, victim.clock.time()),
                                  honest_id.peer_id)
        started = time.monotonic()
        for _ in range(FLOOD):
            await attacker.publish(ADVERT_TOPIC, signed_advert(Identity.generate(),
                                                               victim.clock.time()))
        await publish_until_heard(attacker, signed_advert(victim.marker, victim.clock.time()),
                                  victim.marker.peer_id)
        took = time.monotonic() - started
        grown = victim.ids() - {honest_id.peer_id}
        assert honest_id.peer_id in victim.membership.view
        assert len(grown) <= relay_budget, len(grown)
        print(f"libp2p flood: {FLOOD} fresh identities over one connection -> view grew by "
              f"{len(grown)} (relay budget {relay_budget}); "
              f"relay_limited={victim.membership.counters['relay_limited']}; {took:.2f} s")
    finally:
        await stop(victim)
        await asyncio.gather(attacker.close(), honest.close(), victim_gossip.close())


def test_a_full_view_admits_trusted_authors_and_keeps_updating_known_ones() -> None:
    from swarm.protocol import Admission, PeerView, admit, expire

    policy = ViewPolicy(max_untrusted=3)
    wall = 1_795_000_000.0
    view = PeerView()
    known = [Identity.generate() for _ in range(3)]
    for identity in known:
        view, verdict = admit(view, _advert.decode(signed_advert(identity, wall)), 1.0, wall,
                              policy)
        assert verdict is Admission.ACCEPTED
    stranger, staked = Identity.generate(), Identity.generate()
    view, verdict = admit(view, _advert.decode(signed_advert(stranger, wall)), 2.0, wall, policy)
    assert verdict is Admission.FULL
    view, verdict = admit(view, _advert.decode(signed_advert(staked, wall)), 2.0, wall, policy,
                          trust=1.0)
    assert verdict is Admission.ACCEPTED
    newer = Advert(known[0].peer_id, (), (), sequence=2, timestamp=wall, ttl=60.0)
    view, verdict = admit(view, newer, 3.0, wall, policy)
    assert verdict is Admission.ACCEPTED  # a known author's update is never refused for space
    assert (len(view), view.untrusted) == (4, 3)
    view = expire(view, 61.5, policy)  # two untrusted authors fell silent: room again
    assert (len(view), view.untrusted) == (2, 1)
