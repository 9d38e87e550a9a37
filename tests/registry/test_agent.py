"""RegistryAgent: tag validation and counters, tags over in-memory gossip, watch, sync,
the pure `volunteer` decision, and volunteer replication between two registry nodes."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest

from swarm._clock import FakeClock
from swarm._errors import UnavailableError
from swarm._proto.swarm.v1 import registry_pb2
from swarm._types import Digest, ModelRef
from swarm.protocol import GossipMessage, Identity, Validation
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import (
    TAG_TOPIC,
    BlobStore,
    ManifestStore,
    Outcome,
    RegistryAgent,
    RegistryConfig,
    TagRecord,
    TagState,
    apply_tag,
    pinned_versions,
    sign_tag,
    verify_tag,
    volunteer,
)
from tests.registry.support import (
    INTRUDER,
    PUBLISHER,
    StaticView,
    make_version,
    peer_id,
    registry_node,
    store_version,
    view_of,
)
from tests.waiting import wait_until

V1, V2, V3 = (Digest.of(b"version %d" % i) for i in (1, 2, 3))


def tag(seq: int, target: Digest, who: Identity = PUBLISHER, name: str = "acme/classifier",
        label: str = "stable") -> bytes:
    return sign_tag(TagRecord(who.public_key, name, label, target, seq, 1_790_000_000.0 + seq), who)


def forge(signed: bytes) -> bytes:
    msg = registry_pb2.SignedTag.FromString(signed)
    msg.signature = bytes(64)
    return msg.SerializeToString()


def message(data: bytes) -> GossipMessage:
    return GossipMessage(TAG_TOPIC, data, received_from=peer_id(99))


def agent_for(tmp_path: Path, network: MemoryNetwork, seed: int,
              config: RegistryConfig | None = None, view: StaticView | None = None,
              clock: FakeClock | None = None) -> RegistryAgent:
    return RegistryAgent(network.join(peer_id(seed)), ManifestStore(BlobStore(tmp_path / f"a{seed}")),
                         view=view or StaticView(),
                         config=config or RegistryConfig.local(volunteer=False),
                         rng=random.Random(seed), clock=clock or FakeClock())


# -- validation and counters ----------------------------------------------------------------


async def test_validator_rejects_forgeries_and_ignores_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent = agent_for(tmp_path, MemoryNetwork(0), 1)
    first = tag(1, V1)
    assert agent.validate(message(forge(first))) is Validation.REJECT
    assert agent.validate(message(b"\x00garbage")) is Validation.REJECT
    assert agent.counters["tags_rejected"] == 2
    assert agent.validate(message(first)) is Validation.ACCEPT  # decides; does not apply
    assert agent.receive(first) is Outcome.BOUND
    assert agent.validate(message(first)) is Validation.IGNORE
    with caplog.at_level(logging.WARNING, logger="swarm.registry"):
        assert agent.validate(message(tag(2, V2, INTRUDER))) is Validation.IGNORE
    assert "does not own the namespace" in caplog.text
    assert agent.receive(tag(3, V2)) is Outcome.ACCEPTED
    assert agent.validate(message(tag(2, V3))) is Validation.IGNORE  # stale
    assert {k: agent.counters[k] for k in (
        "tags_bound", "tags_accepted", "tags_duplicate", "tags_unauthorized", "tags_stale",
        "tags_rejected")} == {"tags_bound": 1, "tags_accepted": 1, "tags_duplicate": 1,
                              "tags_unauthorized": 1, "tags_stale": 1, "tags_rejected": 2}
    assert agent.resolve("acme/classifier:stable") == V2
    assert agent.signed_record("acme/classifier", "stable") == tag(3, V2)


async def test_allowlist_binds_a_namespace_before_anyone_publishes(tmp_path: Path) -> None:
    config = RegistryConfig.local(volunteer=False, allowlist={"acme": {PUBLISHER.public_key}})
    agent = agent_for(tmp_path, MemoryNetwork(0), 1, config)
    assert agent.validate(message(tag(1, V1, INTRUDER))) is Validation.IGNORE
    assert agent.receive(tag(1, V1, INTRUDER)) is Outcome.UNAUTHORIZED
    assert agent.receive(tag(2, V2)) is Outcome.ACCEPTED
    assert agent.counters["tags_unauthorized"] == 2


# -- over gossip ----------------------------------------------------------------------------


async def test_tags_spread_by_gossip_and_bad_ones_die_at_the_first_hop(tmp_path: Path) -> None:
    network = MemoryNetwork(0, degree=0)
    agents = [agent_for(tmp_path, network, i) for i in range(3)]
    hosts = network.peers()
    network.link(hosts[0], hosts[1])
    network.link(hosts[1], hosts[2])
    attacker = network.join(peer_id(50))
    network.link(attacker.peer_id, hosts[1])
    async with asyncio.TaskGroup() as tg:
        for agent in agents:
            tg.create_task(agent.run())
        await wait_until(lambda: all(network._hosts[p]._subs.get(TAG_TOPIC) for p in hosts),
                         what="every agent subscribed to tags")

        assert await agents[0].publish(tag(1, V1)) is Outcome.BOUND
        await network.settle()
        assert [a.resolve("acme/classifier:stable") for a in agents] == [V1, V1, V1]

        await attacker.publish(TAG_TOPIC, forge(tag(2, V2)))  # forged
        await attacker.publish(TAG_TOPIC, tag(3, V3, INTRUDER))  # valid, but not the owner's key
        await network.settle()
        assert [a.resolve("acme/classifier:stable") for a in agents] == [V1, V1, V1]
        assert agents[1].counters["tags_rejected"] == 1
        assert agents[1].counters["tags_unauthorized"] == 1
        # Neither was forwarded past the first honest hop.
        assert agents[2].counters["tags_rejected"] == agents[2].counters["tags_unauthorized"] == 0
        for agent in agents:
            agent.stop()


async def test_watch_yields_current_then_each_move_and_ends_on_stop(tmp_path: Path) -> None:
    agent = agent_for(tmp_path, MemoryNetwork(0), 1)
    seen: list[Digest] = []

    async def watch() -> None:
        async for digest in agent.watch("acme/classifier:stable"):
            seen.append(digest)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(agent.run())
        await agent.publish(tag(1, V1))
        watcher = tg.create_task(watch())
        await wait_until(lambda: len(seen) == 1, what="the current target")
        await agent.publish(tag(2, V2))
        await wait_until(lambda: len(seen) == 2, what="the first move")
        await agent.publish(tag(3, V2, label="other"))  # another tag: no event for this watch
        await agent.publish(tag(4, V1))
        await wait_until(lambda: len(seen) == 3, what="the second move")
        agent.stop()
    assert watcher.done()
    assert seen == [V1, V2, V1]


async def test_a_late_joiner_syncs_tags_from_a_peer(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src")
    async with registry_node(tmp_path / "old", MemoryNetwork(0), 1) as old:
        await old.agent.publish(tag(1, v.digest))
        await old.agent.publish(tag(2, V2, label="canary"))
        view = StaticView(view_of([(peer_id(1), old.address, [])]))
        late = agent_for(tmp_path, MemoryNetwork(1), 2, view=view)  # gossip never reaches it
        assert await late.sync() == 2
        assert late.resolve("acme/classifier:stable") == v.digest
        assert late.resolve("acme/classifier:canary") == V2
        assert await late.sync() == 0  # duplicates now
        assert late.counters["tag_syncs"] == 2
        view.view = view_of([(peer_id(3), "127.0.0.1:1", [])])  # nobody listens there
        assert await late.sync() == 0
        assert late.counters["tag_sync_failures"] == 1


async def test_a_failed_first_sync_is_retried_soon(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src")
    async with registry_node(tmp_path / "old", MemoryNetwork(0), 1) as old:
        await old.agent.publish(tag(1, v.digest))
        view = StaticView(view_of([(peer_id(3), "127.0.0.1:1", [])]))  # nobody listens there
        clock = FakeClock()
        late = agent_for(tmp_path, MemoryNetwork(1), 2, view=view, clock=clock,
                         config=RegistryConfig(sync_interval=600.0, volunteer=False))
        task = asyncio.create_task(late.run())
        try:
            await wait_until(lambda: clock.sleepers == 1, what="the first sync's wait")
            assert clock.jump() <= 0.5  # the first try comes soon after joining
            await wait_until(lambda: late.counters["tag_sync_failures"] == 1
                             and clock.sleepers == 1, what="a failed sync, then a wait")
            view.view = view_of([(peer_id(1), old.address, [])])
            # Soon, not after sync_interval (600 s): the retry backs off from 0.1 s.
            assert clock.jump() <= 1.0
            await wait_until(lambda: late.state.get("acme/classifier", "stable") is not None,
                             what="the tags synced on the retry")
            assert late.resolve("acme/classifier:stable") == v.digest
            assert late.counters["tag_sync_failures"] == 1
        finally:
            late.stop()
            await task


# -- the pure replication decision ----------------------------------------------------------


P = [peer_id(i) for i in range(10)]


def test_volunteer_picks_under_replicated_versions_it_can_fetch() -> None:
    view = view_of([(P[0], "a:1", [V1, V2]), (P[1], "b:1", [V1, V2]), (P[2], "c:1", [V2]),
                    (P[3], "d:1", [])])
    rng = random.Random(0)
    # V1: 2 holders < 3; V2: 3 holders (enough); V3: nobody to fetch from.
    # Candidates for V1: 4 peers - 2 holders + this node = 3; deficit 1 -> p = 1/3.
    picks = [volunteer(view, {V1, V2, V3}, set(), 3, rng) for _ in range(3000)]
    assert all(p in ([], [V1]) for p in picks)
    assert 0.28 < sum(p == [V1] for p in picks) / 3000 < 0.39
    assert volunteer(view, {V1}, {V1}, 3, rng) == []  # stored here already
    assert volunteer(view, {V1}, set(), 2, rng) == []  # replicated enough


def test_volunteer_orders_by_fewest_holders_and_ignores_draining_peers() -> None:
    view = view_of([(P[0], "a:1", [V1, V2]), (P[1], "b:1", [V2]), (P[2], "c:1", [V1])],
                   draining=[P[2]])
    # Live holders: V1 1 (P2 drains), V2 2; R = 5 and few peers: p = 1 for both.
    assert volunteer(view, {V1, V2}, set(), 5, random.Random(1)) == [V1, V2]
    # Everyone sees the same deficit: about `deficit` of them volunteer.
    wide = view_of([(P[i], f"h{i}:1", [V1] if i == 0 else []) for i in range(10)])
    volunteers = sum(bool(volunteer(wide, {V1}, set(), 3, random.Random(seed)))
                     for seed in range(10))
    assert 0 < volunteers <= 6


def test_pinned_versions_are_targets_and_their_rollback_targets() -> None:
    state = TagState()
    for signed in (tag(1, V1), tag(2, V2), tag(3, V3, label="canary")):
        state, _ = apply_tag(state, verify_tag(signed), allowlist={})
    assert pinned_versions(state) == {V1, V2, V3}
    state, _ = apply_tag(state, verify_tag(tag(4, V3)), allowlist={})
    assert pinned_versions(state) == {V2, V3}  # stable: V3 now, V2 before it


# -- replication end to end -----------------------------------------------------------------


async def test_a_node_volunteers_and_replicates_a_pinned_version(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src", size=(1 << 20) + 77)
    network = MemoryNetwork(0)
    config = RegistryConfig.local(volunteer=False, jitter=0.0, replication_factor=2)
    async with registry_node(tmp_path / "a", network, 1, config=config) as a, \
            registry_node(tmp_path / "b", network, 2, config=config) as b:
        store_version(a.manifests, v)
        await a.agent.publish(tag(1, v.digest))
        await network.settle()
        assert b.agent.resolve("acme/classifier:stable") == v.digest
        with pytest.raises(UnavailableError):  # nobody advertises it yet
            await b.agent.ensure(v.digest)
        b.view.view = view_of([(peer_id(1), a.address, [v.digest])])
        assert await b.agent.replicate_once() == [v.digest]
        assert b.manifests.complete(v.digest)
        assert b.blobs.read(v.blob) == v.data
        assert b.stored == [v.digest]
        assert b.agent.counters["fetches_completed"] == 1
        assert b.agent.counters["bytes_fetched"] == len(v.data)
        # Once B advertises it, the version has R holders: nobody else volunteers.
        a.view.view = view_of([(peer_id(2), b.address, [v.digest])])
        assert await a.agent.replicate_once() == []


async def test_a_volunteer_looks_again_after_its_jitter(tmp_path: Path) -> None:
    v = make_version(tmp_path / "src")
    config = RegistryConfig.local(volunteer=False, jitter=5.0, replication_factor=2)
    async with registry_node(tmp_path / "a", MemoryNetwork(0), 1) as a:
        store_version(a.manifests, v)
        one_holder = view_of([(peer_id(1), a.address, [v.digest])])
        clock = FakeClock()
        view = StaticView(one_holder)
        b = agent_for(tmp_path, MemoryNetwork(1), 2, config=config, view=view, clock=clock)
        assert b.receive(tag(1, v.digest)) is Outcome.BOUND
        # Another node steps forward while B waits out its jitter: B fetches nothing.
        first = asyncio.ensure_future(b.replicate_once())
        await wait_until(lambda: clock.sleepers == 1, what="B waiting out its jitter")
        view.view = view_of([(peer_id(1), a.address, [v.digest]), (peer_id(3), "c:1", [v.digest])])
        assert 0 <= clock.jump() <= 5.0
        await wait_until(first, what="the first pass")
        assert first.result() == []
        assert b.counters["fetches_completed"] == 0
        # Nobody does: after the jitter, B fetches it.
        view.view = one_holder
        second = asyncio.ensure_future(b.replicate_once())
        await wait_until(lambda: clock.sleepers == 1, what="B waiting out its jitter")
        assert b.counters["fetches_completed"] == 0  # not before the jitter
        clock.jump()
        await wait_until(second, what="the second pass")
        assert second.result() == [v.digest]


async def test_a_storeless_agent_tracks_signed_tags_only(tmp_path: Path) -> None:
    """What a client's light peer runs: tags and their history, no store, no fetching."""
    network = MemoryNetwork(0)
    with pytest.raises(ValueError, match="cannot volunteer"):
        RegistryAgent(network.join(peer_id(7)), None, view=StaticView(), config=RegistryConfig())
    light = RegistryAgent(network.join(peer_id(8)), None, view=StaticView(),
                          config=RegistryConfig.local(volunteer=False))
    ref = ModelRef.parse("acme/classifier:stable")
    assert light.signed_targets(ref) is None
    assert light.receive(tag(1, V1)) is Outcome.BOUND
    assert light.receive(tag(2, V2)) is Outcome.ACCEPTED
    assert light.receive(tag(3, V1)) is Outcome.ACCEPTED  # a rollback
    assert light.signed_targets(ref) == (V1, V2, V1)
    assert light.signed_targets(ModelRef.parse("acme/classifier")) is None  # no `latest`
    assert light.receive(tag(4, V3, INTRUDER)) is Outcome.UNAUTHORIZED
    assert light.signed_targets(ref) == (V1, V2, V1)
    with pytest.raises(UnavailableError, match="keeps no registry store"):
        await light.ensure(V1)
