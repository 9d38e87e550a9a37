"""Membership over the in-memory transport: discovery, expiry, and hostile adverts."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from swarm._clock import FakeClock
from swarm._types import Digest
from swarm.node import Node, NodeConfig
from swarm.node._runtime import Model
from swarm.protocol import (
    ADVERT_TOPIC,
    Advert,
    Gossip,
    Identity,
    Membership,
    MembershipConfig,
    ModelOffer,
    PeerView,
    Price,
    RateLimiter,
    _advert,
    significant_change,
)
from swarm.protocol.testing import MemoryGossip, MemoryNetwork
from tests.waiting import wait_until

INTERVAL = 0.5


def advert_of(identity: Identity, *, sequence: int, timestamp: float, ttl: float = 5.0,
              queue: int = 0) -> Advert:
    return Advert(identity.peer_id, ("127.0.0.1:1",),
                  (ModelOffer(Digest.of(b"m"), "test/m", max_batch_size=8),),
                  sequence=sequence, timestamp=timestamp, ttl=ttl, queue_depth=queue)


@asynccontextmanager
async def swarm_of(n: int, tmp_path: Path, mlp: Model, network: MemoryNetwork,
                   ) -> AsyncIterator[list[Node]]:
    async def factory(identity: Identity, config: NodeConfig) -> Gossip:
        return network.join(identity.peer_id)

    nodes = []
    try:
        for i in range(n):
            config = NodeConfig.local(tmp_path / f"n{i}", device="cpu", p2p_port=0,
                                      advert_interval=INTERVAL, price_per_request=10 * (i + 1),
                                      region=f"r{i}")
            node = Node(config, models=[mlp], gossip_factory=factory)
            await node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def sees_all(nodes: list[Node]) -> bool:
    ids = {n.identity.peer_id for n in nodes if n.identity}
    return all(n.membership is not None and set(n.membership.view.entries) == ids - {
        n.identity.peer_id} for n in nodes if n.identity)


async def test_nodes_discover_each_other_and_adverts_carry_capacity(
        tmp_path: Path, mlp: Model) -> None:
    network = MemoryNetwork(seed=1)
    async with swarm_of(3, tmp_path, mlp, network) as nodes:
        await wait_until(lambda: sees_all(nodes), what="every node sees the others")
        view = nodes[0].membership.view  # type: ignore[union-attr]
        entry = view.get(nodes[1].identity.peer_id)  # type: ignore[union-attr]
        assert entry is not None
        advert = entry.advert
        assert advert.endpoints == (nodes[1].tls_address,)
        assert [m.name for m in advert.models] == ["builtin/mlp"]
        assert advert.models[0].digest == mlp.digest
        assert advert.price == Price(20, 0)
        assert advert.region == "r1"
        assert advert.hardware.device_kind == "cpu"
        assert not advert.draining
        assert [e.peer_id for e in view.providers(mlp.digest)] == sorted(
            (nodes[1].identity.peer_id, nodes[2].identity.peer_id),  # type: ignore[union-attr]
            key=lambda p: p.value)


async def test_killed_node_leaves_every_view_within_three_intervals(
        tmp_path: Path, mlp: Model) -> None:
    network = MemoryNetwork(seed=2)
    async with swarm_of(3, tmp_path, mlp, network) as nodes:
        await wait_until(lambda: sees_all(nodes), what="every node sees the others")
        victim = nodes[2].identity.peer_id  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        network.kill(victim)  # crash: no goodbye, no more adverts
        await wait_until(lambda: all(victim not in n.membership.view for n in nodes[:2]),
                         timeout=3 * INTERVAL * 1.2 + 1, what="the victim gone from every view")
        assert loop.time() - killed_at <= 3 * INTERVAL * 1.2 + 0.5


async def test_draining_node_advertises_it_before_stopping(tmp_path: Path, mlp: Model) -> None:
    network = MemoryNetwork(seed=3)
    async with swarm_of(2, tmp_path, mlp, network) as nodes:
        await wait_until(lambda: sees_all(nodes), what="both nodes see each other")
        leaving = nodes[1]
        peer = leaving.identity.peer_id  # type: ignore[union-attr]
        await leaving.stop()
        entry = nodes[0].membership.view.get(peer)  # type: ignore[union-attr]
        assert entry is not None
        assert entry.advert.draining


@dataclasses.dataclass
class Hostile:
    network: MemoryNetwork
    membership: Membership  # the honest node's, on a FakeClock: no refill unless moved
    rogue: Gossip
    clock: FakeClock


@pytest.fixture
def hostile() -> Hostile:
    network = MemoryNetwork(seed=4, degree=0)
    honest_id = Identity.generate()
    honest = network.join(honest_id.peer_id)
    rogue = network.join(Identity.generate().peer_id)
    network.link(honest_id.peer_id, rogue.peer_id)
    clock = FakeClock()
    membership = Membership(honest, config=MembershipConfig(rate_per_second=1, rate_burst=3),
                            clock=clock)
    return Hostile(network, membership, rogue, clock)


async def run_membership(membership: Membership) -> asyncio.Task[None]:
    task = asyncio.create_task(membership.run())
    host = membership.gossip
    assert isinstance(host, MemoryGossip)
    await wait_until(lambda: host._subs.get(ADVERT_TOPIC), what="the advert subscription open")
    return task


async def processed(h: Hostile) -> None:
    """Return once the membership has been through everything the rogue sent so far.

    A fresh peer's advert goes last; subscriptions deliver in order, so once it is in
    the view, everything before it has been admitted or refused.
    """
    marker = Identity.generate()
    await h.network.settle()
    await h.rogue.publish(ADVERT_TOPIC, _advert.encode(
        advert_of(marker, sequence=1, timestamp=h.clock.time()), marker))
    await wait_until(lambda: marker.peer_id in h.membership.view, what="the marker admitted")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_forged_and_tampered_adverts_never_enter_the_view(hostile: Hostile) -> None:
    membership, rogue, clock = hostile.membership, hostile.rogue, hostile.clock
    task = await run_membership(membership)
    victim = Identity.generate()
    attacker = Identity.generate()
    good = _advert.encode(advert_of(victim, sequence=1, timestamp=clock.time()), victim)
    # Tampered: flip a byte inside the signed payload.
    tampered = bytearray(good)
    tampered[12] ^= 0x01
    # Forged: the victim's peer id, signed by the attacker's key.
    forged_payload = advert_of(victim, sequence=2, timestamp=clock.time())
    signed = _advert.encode(dataclasses.replace(forged_payload, peer_id=attacker.peer_id), attacker)
    from swarm._proto.swarm.v1 import advert_pb2

    msg = advert_pb2.SignedAdvert.FromString(signed)
    payload = advert_pb2.CapacityAdvert.FromString(msg.payload)
    payload.peer_id = victim.peer_id.value
    forged = advert_pb2.SignedAdvert(payload=payload.SerializeToString(),
                                     signature=msg.signature).SerializeToString()
    for data in (bytes(tampered), forged, b"\x00garbage"):
        await rogue.publish(ADVERT_TOPIC, data)
    await processed(hostile)
    assert len(membership.view) == 1  # the marker alone
    assert victim.peer_id not in membership.view
    assert membership.counters["forged"] == 3
    await rogue.publish(ADVERT_TOPIC, good)
    await wait_until(lambda: victim.peer_id in membership.view, what="the genuine advert admitted")
    await stop(task)


async def test_replayed_and_stale_adverts_are_ignored(hostile: Hostile) -> None:
    membership, rogue, clock = hostile.membership, hostile.rogue, hostile.clock
    task = await run_membership(membership)
    peer = Identity.generate()
    now = clock.time()
    first = _advert.encode(advert_of(peer, sequence=10, timestamp=now, queue=1), peer)
    newer = _advert.encode(advert_of(peer, sequence=11, timestamp=now, queue=7), peer)
    stale = _advert.encode(advert_of(peer, sequence=12, timestamp=now - 3600), peer)
    future = _advert.encode(advert_of(peer, sequence=13, timestamp=now + 3600), peer)
    await rogue.publish(ADVERT_TOPIC, first)
    await rogue.publish(ADVERT_TOPIC, newer)
    await wait_until(lambda: (e := membership.view.get(peer.peer_id)) is not None
                     and e.advert.sequence == 11, what="the newer advert admitted")
    for data in (first, stale, future):  # a replay of an older advert, a stale one, a future one
        await rogue.publish(ADVERT_TOPIC, data)
    await processed(hostile)
    entry = membership.view.get(peer.peer_id)
    assert entry is not None
    assert entry.advert.sequence == 11
    assert entry.advert.queue_depth == 7
    assert membership.counters["replayed"] >= 1
    assert membership.counters["stale"] == 1
    assert membership.counters["future"] == 1
    await stop(task)


async def test_a_flood_from_one_peer_is_rate_limited(hostile: Hostile) -> None:
    membership, rogue, clock = hostile.membership, hostile.rogue, hostile.clock
    task = await run_membership(membership)
    peer = Identity.generate()
    for seq in range(1, 51):
        await rogue.publish(ADVERT_TOPIC, _advert.encode(
            advert_of(peer, sequence=seq, timestamp=clock.time()), peer))
    await processed(hostile)
    # The clock stood still: the burst of 3, and no refill.
    assert membership.counters["accepted"] == 3 + 1  # and the marker
    assert membership.counters["rate_limited"] == 47
    entry = membership.view.get(peer.peer_id)
    assert entry is not None
    assert entry.advert.sequence == 3
    clock.advance(1.0)  # one token back
    await rogue.publish(ADVERT_TOPIC, _advert.encode(
        advert_of(peer, sequence=51, timestamp=clock.time()), peer))
    await wait_until(lambda: (e := membership.view.get(peer.peer_id)) is not None
                     and e.advert.sequence == 51, what="the refilled token used")
    await stop(task)


async def test_our_own_advert_is_published_and_not_admitted() -> None:
    network = MemoryNetwork(seed=5)
    me = Identity.generate()
    other = Identity.generate()
    listener = Membership(network.join(other.peer_id))
    import time

    def source() -> Advert:
        return advert_of(me, sequence=0, timestamp=0)

    member = Membership(network.join(me.peer_id), identity=me, source=source,
                        config=MembershipConfig.fast())
    tasks = [asyncio.create_task(listener.run()), asyncio.create_task(member.run())]
    await wait_until(lambda: me.peer_id in listener.view, what="our advert heard by the listener")
    entry = listener.view.get(me.peer_id)
    assert entry is not None
    assert abs(entry.advert.timestamp - time.time()) < 5
    assert entry.advert.ttl == MembershipConfig.fast().ttl
    assert len(member.view) == 0  # SELF
    for t in tasks:
        await stop(t)


# ---------------------------------------------------------------------------- pure pieces

def test_significant_change() -> None:
    me = Identity.generate()
    base = advert_of(me, sequence=1, timestamp=1.0, queue=10)
    assert significant_change(None, base)
    assert not significant_change(base, dataclasses.replace(base, sequence=2, queue_depth=12))
    assert significant_change(base, dataclasses.replace(base, queue_depth=15))
    assert significant_change(base, dataclasses.replace(base, draining=True))
    assert significant_change(base, dataclasses.replace(base, price=Price(1, 0)))
    assert significant_change(base, dataclasses.replace(base, models=()))
    assert significant_change(base, dataclasses.replace(base, stored=(Digest.of(b"x"),)))


def test_rate_limiter_refills_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # keys are independent
    clock.advance(0.5)
    assert limiter.allow("a")
    assert not limiter.allow("a")


def test_sequence_is_monotonic_across_restarts_of_the_clock() -> None:
    network = MemoryNetwork(seed=6)
    me = Identity.generate()
    clock = FakeClock()
    member = Membership(network.join(me.peer_id), identity=me,
                        source=lambda: advert_of(me, sequence=0, timestamp=0), clock=clock,
                        rng=random.Random(0))
    first = member._next_advert()
    second = member._next_advert()
    assert second.sequence > first.sequence
    assert first.sequence >= int(clock.time() * 1000)


def test_view_is_a_frozen_snapshot() -> None:
    view = PeerView()
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.own = None  # type: ignore[misc]


def test_a_change_right_after_an_advert_waits_min_interval_without_spinning() -> None:
    from swarm.simnet._vloop import VirtualClock, run_virtual

    async def scenario() -> tuple[int, float]:
        network = MemoryNetwork(seed=7)
        me = Identity.generate()
        clock = VirtualClock.current()
        member = Membership(network.join(me.peer_id), identity=me, clock=clock,
                            source=lambda: advert_of(me, sequence=0, timestamp=0),
                            config=MembershipConfig(advert_interval=60, min_interval=5,
                                                    check_interval=0.5))
        task = asyncio.create_task(member.run())
        await asyncio.sleep(0.1)  # virtual seconds: the first advert went out at t=0
        member.notify_change()  # too soon: must wait until t=5, not spin
        await asyncio.sleep(6)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return member.counters["published"], asyncio.get_running_loop().time()

    published, _ = run_virtual(scenario())  # a spin would never let virtual time advance
    assert published == 2
