"""Members dial peers they learn from adverts: the overlay does not stay a star."""

from __future__ import annotations

import asyncio

from swarm.protocol import Advert, Identity, Libp2pConfig, Libp2pGossip, Membership, MembershipConfig
from tests.waiting import wait_until


async def test_members_connect_beyond_their_bootstrap_peer() -> None:
    identities = [Identity.generate() for _ in range(5)]
    hosts: list[Libp2pGossip] = []
    members: list[Membership] = []
    tasks: list[asyncio.Task[None]] = []
    config = MembershipConfig(advert_interval=1.0, min_interval=0.2, check_interval=0.1,
                              min_peers=3, connect_interval=0.5)
    try:
        for i, identity in enumerate(identities):
            bootstrap = (hosts[0].listen_addrs[0],) if i else ()
            gossip = await Libp2pGossip.start(identity, Libp2pConfig(bootstrap=bootstrap))
            hosts.append(gossip)

            def source(identity: Identity = identity, gossip: Libp2pGossip = gossip) -> Advert:
                return Advert(identity.peer_id, ("127.0.0.1:1",), (), sequence=0, timestamp=0,
                              ttl=0, p2p_addrs=tuple(gossip.listen_addrs))

            member = Membership(gossip, identity=identity, source=source, config=config)
            members.append(member)
            tasks.append(asyncio.create_task(member.run()))
        # Everyone but the hub started with one connection (to the hub).
        await wait_until(lambda: all(len(h.connected_peers()) >= 3 for h in hosts[1:]),
                         timeout=30, what=lambda: "every member connected to 3 peers; counts: "
                         f"{[len(h.connected_peers()) for h in hosts]}")
        assert all(len(m.view) == 4 for m in members)
        advert = members[1].view.get(identities[2].peer_id)
        assert advert is not None
        assert advert.advert.p2p_addrs == tuple(hosts[2].listen_addrs)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for host in hosts:
            await host.close()
