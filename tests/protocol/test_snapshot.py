"""Snapshots (push-pull on join): both transports, Membership, LightPeer and tag records.

A joining peer pulls the signed records its peers hold and validates each one exactly
as gossip would, so its first view is the swarm's current state rather than whatever
adverts happened to arrive in its first second.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from swarm._clock import FakeClock
from swarm._errors import UnavailableError
from swarm._types import Digest, ModelRef
from swarm.protocol import (
    ADVERT_TOPIC,
    Advert,
    Gossip,
    GossipMessage,
    Identity,
    Libp2pConfig,
    Libp2pGossip,
    LightPeer,
    Membership,
    MembershipConfig,
    ModelOffer,
    Validation,
    _advert,
)
from swarm.protocol._gossip import MAX_SNAPSHOT_ITEMS
from swarm.protocol.testing import MemoryNetwork
from tests.waiting import wait_until

TOPIC = "test/snapshot"


def only_good(msg: GossipMessage) -> Validation:
    if msg.data.startswith(b"bad"):
        return Validation.REJECT
    if msg.data.startswith(b"old"):
        return Validation.IGNORE
    return Validation.ACCEPT


def offer(name: str = "test/m") -> ModelOffer:
    return ModelOffer(Digest.of(name.encode()), name, max_batch_size=8)


def provider(identity: Identity) -> Callable[[], Advert]:
    def source() -> Advert:
        return Advert(identity.peer_id, ("127.0.0.1:1",), (offer(),),
                      sequence=0, timestamp=0.0, ttl=0.0)

    return source


# ---------------------------------------------------------------------- in-memory transport


async def test_memory_pull_validates_each_item_as_gossip() -> None:
    network = MemoryNetwork(seed=1)
    server, puller = network.join(Identity.generate().peer_id), network.join(
        Identity.generate().peer_id)
    server.set_snapshot(TOPIC, lambda: [b"good-1", b"bad-1", b"old-1", b"good-2"])
    puller.set_validator(TOPIC, only_good)
    got = await puller.pull(TOPIC, server.peer_id)
    assert [m.data for m in got] == [b"good-1", b"good-2"]
    assert {(m.received_from, m.source, m.topic) for m in got} == {(server.peer_id, None, TOPIC)}
    stats = puller.stats()
    assert (stats.snapshot_items, stats.rejected, stats.ignored) == (4, 1, 1)


async def test_memory_pull_fails_cleanly_and_is_bounded() -> None:
    network = MemoryNetwork(seed=2)
    a, b, c = (network.join(Identity.generate().peer_id) for _ in range(3))
    with pytest.raises(UnavailableError, match="serves no snapshot"):
        await a.pull(TOPIC, b.peer_id)
    b.set_snapshot(TOPIC, lambda: [b"x"] * (MAX_SNAPSHOT_ITEMS + 10))
    assert len(await a.pull(TOPIC, b.peer_id)) == MAX_SNAPSHOT_ITEMS
    network.partition([[a.peer_id], [b.peer_id, c.peer_id]])
    with pytest.raises(UnavailableError, match="cannot be reached"):
        await a.pull(TOPIC, b.peer_id)
    network.heal()
    network.kill(b.peer_id)
    with pytest.raises(UnavailableError):
        await a.pull(TOPIC, b.peer_id)


# ---------------------------------------------------------------------- libp2p transport


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Libp2pGossip]]]:
    started: list[Libp2pGossip] = []

    async def factory(*bootstrap: Libp2pGossip, **config: Any) -> Libp2pGossip:
        gossip = await Libp2pGossip.start(Identity.generate(), Libp2pConfig(
            bootstrap=tuple(h.listen_addrs[0] for h in bootstrap), **config))
        started.append(gossip)
        return gossip

    try:
        yield factory
    finally:
        await asyncio.gather(*(g.close() for g in started))


async def test_libp2p_pull_round_trip_is_validated_and_bounded(
        start: Callable[..., Awaitable[Libp2pGossip]]) -> None:
    server = await start(snapshot_burst=3, snapshot_rate=0.01)
    puller = await start(server)
    await wait_until(lambda: puller.connected_peers() == [server.peer_id], timeout=5,
                     what="the puller connected")
    big = b"y" * 100_000
    server.set_snapshot(TOPIC, lambda: [b"good-1", b"bad-1", b"old-1", big, b"good-2"])
    puller.set_validator(TOPIC, only_good)
    t0 = time.monotonic()
    got = await puller.pull(TOPIC, server.peer_id)
    took = time.monotonic() - t0
    assert [m.data for m in got] == [b"good-1", big, b"good-2"]
    assert {(m.received_from, m.source) for m in got} == {(server.peer_id, None)}
    assert took < 1.0, f"one pull took {took:.3f} s"
    with pytest.raises(UnavailableError, match="serves no snapshot"):
        await puller.pull("test/other", server.peer_id)
    for _ in range(2):
        await puller.pull(TOPIC, server.peer_id)
    with pytest.raises(UnavailableError, match="busy"):  # past the per-peer burst
        await puller.pull(TOPIC, server.peer_id)
    print(f"libp2p snapshot pull of 5 items (100 KB): {took * 1000:.1f} ms")


async def test_libp2p_pull_from_a_gone_peer_is_unavailable(
        start: Callable[..., Awaitable[Libp2pGossip]]) -> None:
    server = await start()
    puller = await start(server, snapshot_timeout=2.0)
    await wait_until(lambda: puller.connected_peers() == [server.peer_id], timeout=5,
                     what="the puller connected")
    await server.close()
    with pytest.raises(UnavailableError):
        await puller.pull(TOPIC, server.peer_id)


# ---------------------------------------------------------------------- membership


def light_peer(network: MemoryNetwork, clock: FakeClock) -> LightPeer:
    async def start(identity: Identity) -> Gossip:
        return network.join(identity.peer_id)

    return LightPeer(start, clock=clock)


async def test_a_late_light_peer_sees_every_provider_at_once() -> None:
    network = MemoryNetwork(seed=3)
    clock = FakeClock()
    config = MembershipConfig(advert_interval=5.0)
    identities = [Identity.generate() for _ in range(10)]
    members = [Membership(network.join(i.peer_id), identity=i, source=provider(i), clock=clock,
                          rng=random.Random(n), config=config)
               for n, i in enumerate(identities)]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(m.run()) for m in members]
        await wait_until(lambda: all(len(m.view) == 9 for m in members),
                         what="the providers to hear each other")
        # The clock stands still: no provider advertises again while the peer joins.
        published = sum(m.counters["published"] for m in members)
        async with light_peer(network, clock) as peer:
            started = time.monotonic()
            view = await peer.settle(timeout=30.0)
            took = time.monotonic() - started
            assert {e.peer_id for e in view} == {i.peer_id for i in identities}
            assert peer.membership is not None
            assert peer.membership.snapshot_counters["pulls"] >= 1
        assert sum(m.counters["published"] for m in members) == published
        assert took < 1.0
        for task in tasks:
            task.cancel()


async def test_a_pulled_advert_expires_when_its_author_would_have_readvertised() -> None:
    network = MemoryNetwork(seed=4, degree=0)
    clock = FakeClock()
    author = Identity.generate()
    server_id = Identity.generate()
    server = Membership(network.join(server_id.peer_id), clock=clock)
    old = Advert(author.peer_id, ("127.0.0.1:1",), (offer(),), sequence=1,
                 timestamp=clock.time() - 4.0, ttl=10.0)
    assert server.receive(_advert.encode(old, author)).ok
    joiner_host = network.join(Identity.generate().peer_id)
    joiner = Membership(joiner_host, clock=clock)
    for msg in await joiner_host.pull(ADVERT_TOPIC, server_id.peer_id):
        joiner.receive(msg.data, pulled=True)
    entry = joiner.view.get(author.peer_id)
    assert entry is not None
    assert entry.expires_at == pytest.approx(clock.monotonic() + 6.0)  # not + 10


async def test_snapshot_items_face_the_same_validator_as_gossip() -> None:
    network = MemoryNetwork(seed=5, degree=0)
    clock = FakeClock()
    liar = network.join(Identity.generate().peer_id)
    good, victim = Identity.generate(), Identity.generate()
    now = clock.time()
    fresh = _advert.encode(Advert(good.peer_id, (), (offer(),), 5, now, 10.0), good)
    stale = _advert.encode(Advert(victim.peer_id, (), (offer(),), 9, now - 3600, 10.0), victim)
    tampered = bytearray(fresh)
    tampered[12] ^= 1
    liar.set_snapshot(ADVERT_TOPIC, lambda: [bytes(tampered), stale, b"junk", fresh, fresh])
    host = network.join(Identity.generate().peer_id)
    member = Membership(host, clock=clock)
    pulled = await host.pull(ADVERT_TOPIC, liar.peer_id)
    for msg in pulled:
        member.receive(msg.data, pulled=True)
    assert [e.peer_id for e in member.view] == [good.peer_id]
    assert member.counters["forged"] == 2
    assert member.counters["stale"] == 1


# ---------------------------------------------------------------------- tag records


async def test_a_late_client_agent_gets_the_tags_from_a_snapshot() -> None:
    from swarm.protocol import PeerView
    from swarm.registry import RegistryAgent, RegistryConfig, TagRecord, sign_tag

    network = MemoryNetwork(seed=6)
    publisher = Identity.generate()
    target = Digest.of(b"version-1")
    record = sign_tag(TagRecord(publisher.public_key, "acme/m", "stable", target, 1,
                                1_790_000_000.0), publisher)
    config = RegistryConfig(volunteer=False)
    node = RegistryAgent(network.join(Identity.generate().peer_id), None, view=PeerView,
                         config=config)
    assert (await node.publish(record)).ok
    client = RegistryAgent(network.join(Identity.generate().peer_id), None, view=PeerView,
                           config=config)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(node.run())
        tg.create_task(client.run())
        await wait_until(client.synced, what="the client's tag snapshot")
        # No gossip carried it (published before the client joined), no node to sync from.
        assert client.resolve(ModelRef.parse("acme/m:stable")) == target
        node.stop()
        client.stop()


async def test_a_pulled_item_does_not_swallow_the_forwarding_of_its_gossip_copy() -> None:
    # Line A - B - C. B pulls X from A's snapshot just before X's gossip copy reaches it;
    # B's validator (as every component's) ignores what it already holds, and an ignored
    # message is not forwarded: without care C would never get X.
    network = MemoryNetwork(seed=7, degree=0)
    a, b, c = (network.join(Identity.generate().peer_id) for _ in range(3))
    network.link(a.peer_id, b.peer_id)
    network.link(b.peer_id, c.peer_id)
    held: set[bytes] = set()

    def b_validator(msg: GossipMessage) -> Validation:
        return Validation.IGNORE if msg.data in held else Validation.ACCEPT

    b.set_validator(TOPIC, b_validator)
    heard = c.subscribe(TOPIC)
    a.set_snapshot(TOPIC, lambda: [b"x"])
    held.update(m.data for m in await b.pull(TOPIC, a.peer_id))
    await a.publish(TOPIC, b"x")
    await a.publish(TOPIC, b"x")  # a second copy (a replay) is ignored as usual
    await network.settle()
    got = asyncio.ensure_future(anext(heard))
    await wait_until(got, timeout=5, what="C to hear X through B")
    assert got.result().data == b"x"
    assert b.stats().ignored == 1
    await c.close()
    assert await anext(heard, None) is None
