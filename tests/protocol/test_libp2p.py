"""The libp2p gossip transport on loopback: delivery, validation, membership, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from swarm._errors import ConfigError
from swarm._types import PeerId
from swarm.protocol import GossipMessage, Identity, Libp2pConfig, Libp2pGossip, Validation
from tests.waiting import wait_until

TOPIC = "test/topic"
PROBE = b"probe"

Start = Callable[..., Awaitable[Libp2pGossip]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """`await start(*bootstrap_hosts, identity=..., **config)`; every host is closed after."""
    started: list[Libp2pGossip] = []

    async def factory(*bootstrap: Libp2pGossip, identity: Identity | None = None,
                      **config: Any) -> Libp2pGossip:
        addrs = tuple(host.listen_addrs[0] for host in bootstrap)
        gossip = await Libp2pGossip.start(identity or Identity.generate(),
                                          Libp2pConfig(bootstrap=addrs, **config))
        started.append(gossip)
        return gossip

    try:
        yield factory
    finally:
        await asyncio.gather(*(gossip.close() for gossip in started))


async def next_or_none(sub: AsyncIterator[GossipMessage], timeout: float) -> GossipMessage | None:
    try:
        return await asyncio.wait_for(anext(sub), timeout)
    except TimeoutError:
        return None


async def warm_up(subs: dict[Libp2pGossip, AsyncIterator[GossipMessage]], timeout: float = 10) -> None:
    """Publish probes from every host until every host has heard every other (mesh formed)."""
    missing = {(rx.peer_id, tx.peer_id) for rx in subs for tx in subs if rx is not tx}
    deadline = time.monotonic() + timeout
    while missing:
        if time.monotonic() > deadline:
            pytest.fail(f"mesh did not form; (receiver, sender) missing: {missing}")
        for host in subs:
            await host.publish(TOPIC, PROBE)
        for host, sub in subs.items():
            while (msg := await next_or_none(sub, 0.05)) is not None:
                if msg.data == PROBE and msg.source is not None:
                    missing.discard((host.peer_id, msg.source))


async def receive(sub: AsyncIterator[GossipMessage], count: int, timeout: float = 5) -> list[GossipMessage]:
    """The next `count` non-probe messages (fails the test when they do not come)."""
    got: list[GossipMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        msg = await next_or_none(sub, max(0.0, deadline - time.monotonic()))
        if msg is None:
            pytest.fail(f"received {len(got)} of {count} messages: {[m.data for m in got]}")
        if msg.data != PROBE:
            got.append(msg)
    return got


async def test_three_hosts_deliver_everywhere_and_to_self(start: Start) -> None:
    a = await start()
    b = await start(a)
    c = await start(a)
    await wait_until(lambda: len(a.connected_peers()) == 2 and b.connected_peers() == [a.peer_id]
                     and c.connected_peers() == [a.peer_id],
                     timeout=5, what="B and C connected to A")
    hosts = (a, b, c)
    subs = {host: host.subscribe(TOPIC) for host in hosts}
    await warm_up(subs)

    for host in hosts:
        await host.publish(TOPIC, b"hello from " + host.peer_id.value.encode())

    for rx in hosts:
        by_source = {m.source: m for m in await receive(subs[rx], 3)}
        assert set(by_source) == {a.peer_id, b.peer_id, c.peer_id}
        for tx in hosts:
            msg = by_source[tx.peer_id]
            assert msg.data == b"hello from " + tx.peer_id.value.encode()
            assert msg.topic == TOPIC
            # Self-delivery comes from ourselves; B and C only hear each other through A.
            expected_forwarder = rx.peer_id if rx is tx else (tx.peer_id if a in (rx, tx) else a.peer_id)
            assert msg.received_from == expected_forwarder


async def test_rejected_messages_are_not_forwarded(start: Start) -> None:
    validator_threads: set[str] = set()

    def b_validator(msg: GossipMessage) -> Validation:
        validator_threads.add(threading.current_thread().name)
        if msg.data.startswith(b"bad"):
            return Validation.REJECT
        if msg.data.startswith(b"ignore"):
            return Validation.IGNORE
        if msg.data.startswith(b"boom"):
            raise RuntimeError("validator bug")  # counts as REJECT, must not hurt the host
        return Validation.ACCEPT

    # Line topology A - B - C: everything C gets from A went through B's validator.
    a = await start()
    b = await start(a)
    b.set_validator(TOPIC, b_validator)
    c = await start(b)
    await wait_until(lambda: len(b.connected_peers()) == 2 and a.connected_peers() == [b.peer_id]
                     and c.connected_peers() == [b.peer_id],
                     timeout=5, what="A and C connected to B only")
    subs = {host: host.subscribe(TOPIC) for host in (a, b, c)}
    await warm_up(subs)

    sent = [b"bad-1", b"good-1", b"ignore-1", b"good-2", b"boom-1", b"bad-2", b"good-3"]
    for data in sent:
        await a.publish(TOPIC, data)
    good = [d for d in sent if d.startswith(b"good")]

    # C sees exactly the valid ones, in order, all forwarded by B and authored by A.
    got = await receive(subs[c], len(good))
    assert [m.data for m in got] == good
    assert {(m.source, m.received_from) for m in got} == {(a.peer_id, b.peer_id)}
    assert [m.data for m in await receive(subs[b], len(good))] == good
    # A's own publishes skip validation and reach A's subscriber, all of them.
    assert [m.data for m in await receive(subs[a], len(sent))] == sent
    # Nothing invalid trails behind the valid messages.
    for sub in (subs[b], subs[c]):
        late = await next_or_none(sub, 0.3)
        assert late is None or late.data == PROBE
    assert validator_threads
    assert threading.main_thread().name not in validator_threads
    # The host survived its validator raising: B still relays valid messages.
    await a.publish(TOPIC, b"good-after-boom")
    assert [m.data for m in await receive(subs[c], 1)] == [b"good-after-boom"]


async def test_closed_peer_leaves_and_bootstrap_reconnects(start: Start) -> None:
    a_identity = Identity.generate()
    a = await start(identity=a_identity)
    b = await start(a, bootstrap_backoff_max=0.5)
    c = await start(a)
    await wait_until(lambda: len(a.connected_peers()) == 2, timeout=5, what="A connected to B and C")

    await c.close()
    await wait_until(lambda: a.connected_peers() == [b.peer_id], timeout=3, what="A drops closed C")

    port = int(a.listen_addrs[0].split("/tcp/")[1].split("/")[0])
    await a.close()
    await wait_until(lambda: b.connected_peers() == [], timeout=3, what="B drops closed A")
    # A comes back on the same address: B's bootstrap loop redials it.
    a2 = await start(identity=a_identity, port=port)
    await wait_until(lambda: b.connected_peers() == [a2.peer_id], timeout=5, what="B reconnects to A")


async def test_close_stops_threads_and_ends_subscriptions() -> None:
    before = {t.ident for t in threading.enumerate()}
    a = await Libp2pGossip.start(Identity.generate(), Libp2pConfig())
    try:
        b = await Libp2pGossip.start(Identity.generate(), Libp2pConfig(bootstrap=(a.listen_addrs[0],)))
        try:
            sub_a, sub_b = a.subscribe(TOPIC), b.subscribe(TOPIC)
            await wait_until(lambda: a.connected_peers() == [b.peer_id], timeout=5, what="A connected to B")
            assert len({t.ident for t in threading.enumerate()} - before) >= 2
        finally:
            await b.close()
    finally:
        t0 = time.monotonic()
        await a.close()
        assert time.monotonic() - t0 < 2
        await a.close()  # idempotent

    assert await asyncio.wait_for(anext(sub_a, None), 1) is None
    assert await asyncio.wait_for(anext(sub_b, None), 1) is None
    assert a.connected_peers() == []
    with pytest.raises(RuntimeError):
        await a.publish(TOPIC, b"late")
    assert await anext(a.subscribe(TOPIC), None) is None

    def leftovers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in before]

    await wait_until(lambda: not leftovers(), timeout=2, what="no threads left behind")


async def test_burst_is_delivered_completely(start: Start) -> None:
    # py-libp2p drops RPCs silently once a peer's outbound queue (32) is full.
    a = await start()
    b = await start(a)
    subs = {a: a.subscribe(TOPIC), b: b.subscribe(TOPIC)}
    await wait_until(lambda: a.connected_peers() == [b.peer_id], timeout=5, what="A connected to B")
    await warm_up(subs)
    sent = [b"burst-%d" % i for i in range(200)]
    for data in sent:
        await a.publish(TOPIC, data)
    assert [m.data for m in await receive(subs[b], len(sent), timeout=20)] == sent
    assert b.dropped == 0


async def test_concurrent_publishers_lose_nothing_locally(start: Start) -> None:
    # libp2p's own subscription buffer (32) overflows unless it is drained in batches.
    a = await start()
    sub = a.subscribe(TOPIC)

    async def publisher(n: int) -> None:
        for i in range(100):
            await a.publish(TOPIC, b"%d-%d" % (n, i))

    async with asyncio.TaskGroup() as tg:
        for n in range(4):
            tg.create_task(publisher(n))
    got = await receive(sub, 400)
    assert len({m.data for m in got}) == 400
    assert a.dropped == 0


async def test_slow_subscriber_drops_oldest(start: Start) -> None:
    a = await start(max_queued_messages=4)
    sub = a.subscribe(TOPIC)
    for i in range(10):
        await a.publish(TOPIC, b"m%d" % i)
    await wait_until(lambda: a.dropped == 6, timeout=3, what="6 of 10 messages dropped")
    assert [m.data for m in await receive(sub, 4)] == [b"m6", b"m7", b"m8", b"m9"]


async def test_start_failures_raise_config_error(start: Start) -> None:
    before = {t.ident for t in threading.enumerate()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError):
            await Libp2pGossip.start(Identity.generate(), Libp2pConfig(port=taken.getsockname()[1]))

    # py-libp2p binds with SO_REUSEPORT: a second host on the same port must still be refused.
    a = await start()
    a_port = int(a.listen_addrs[0].split("/tcp/")[1].split("/")[0])
    with pytest.raises(ConfigError):
        await Libp2pGossip.start(Identity.generate(), Libp2pConfig(port=a_port))

    bad = "/ip4/127.0.0.1/tcp/1/p2p/not-a-peer-id"
    with pytest.raises(ConfigError):
        await Libp2pGossip.start(Identity.generate(), Libp2pConfig(bootstrap=(bad,)))
    with pytest.raises(ConfigError):
        Libp2pConfig(bootstrap=("/ip4/127.0.0.1/tcp/1",))
    with pytest.raises(ConfigError):
        Libp2pConfig(host="localhost")

    await a.close()
    await wait_until(lambda: {t.ident for t in threading.enumerate()} <= before,
                     timeout=2, what="no threads left behind by failed starts")


_PEER_SCRIPT = """
import asyncio, sys
from swarm.protocol import Identity
from swarm.protocol import Libp2pConfig, Libp2pGossip

async def main():
    gossip = await Libp2pGossip.start(Identity.generate(), Libp2pConfig(bootstrap=(sys.argv[1],)))
    print(gossip.peer_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_frozen_peer_is_dropped(start: Start) -> None:
    a = await start()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PEER_SCRIPT, a.listen_addrs[0],
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        child = PeerId(line.decode().strip())
        await wait_until(lambda: child in a.connected_peers(), timeout=5, what="child connected")
        os.kill(proc.pid, signal.SIGSTOP)
        took = await wait_until(lambda: child not in a.connected_peers(),
                                timeout=12, what="frozen peer dropped")
        print(f"frozen peer dropped after {took:.1f} s")
    finally:
        proc.kill()  # SIGKILL ends a stopped process too
        await proc.wait()
