"""Registry wired into the node: publish -> replicate -> serve on another node; rollout and
rollback under continuous load with zero failed requests.

Skipped until the node wiring (Node(registry_config=..., rollout_config=...)) lands.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from swarm._errors import ModelNotFoundError
from swarm.client import AsyncClient
from swarm.node import Node, NodeConfig
from swarm.protocol import Gossip, Identity
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import RegistryClient, RegistryConfig, RolloutConfig
from swarm.registry._publish import build_manifest, publish_tag, push
from tests.registry.programs import export
from tests.registry.support import PUBLISHER
from tests.waiting import wait_until


async def test_publish_replicate_serve_rollout_rollback(tmp_path: Path) -> None:
    network = MemoryNetwork(0)

    async def gossip(identity: Identity, config: NodeConfig) -> Gossip:
        return network.join(identity.peer_id)

    registry = RegistryConfig.local(jitter=0.0, replication_factor=2)
    rollout = RolloutConfig(linger=0.3, retry_initial=0.1, retry_max=0.5)

    def node(i: int, serve: tuple[str, ...] = ()) -> Node:
        config = NodeConfig.local(tmp_path / f"n{i}", device="cpu", p2p_port=0,
                                  advert_interval=0.3, serve=serve)
        return Node(config, gossip_factory=gossip, registry_config=registry,
                    rollout_config=rollout)

    v1, v2 = export(tmp_path / "v1.pt2", 1.0), export(tmp_path / "v2.pt2", 2.0)
    async with node(0) as a, node(1, serve=("acme/classifier:stable",)) as b, \
            RegistryClient(a.grpc_address) as publisher:
        m1 = build_manifest(v1, "acme/classifier", "v1", PUBLISHER, created_at=1.0)
        d1 = (await push(publisher, v1, m1, PUBLISHER)).digest
        await publish_tag(publisher, PUBLISHER, "acme/classifier", "stable", d1, now=2.0)
        # B fetches v1 from A (the only holder), loads it and serves it.
        await wait_until(lambda: any(s.name == "acme/classifier" for s in b.table), timeout=15,
                         what="B serving v1")
        assert b.table.resolve("acme/classifier").digest == d1
        assert b.manifests is not None
        assert b.manifests.complete(d1)
        # Clients name the model as --serve did, or pin a version by digest.
        async with AsyncClient(b.grpc_address) as client:
            x = np.ones((2, 4), np.float32)
            by_tag = await client.infer("acme/classifier:stable", x)
            assert np.array_equal(by_tag, await client.infer("acme/classifier", x))
            assert np.array_equal(by_tag, await client.infer(f"acme/classifier@{d1}", x))
            # Not served here (nor, says the gateway, anywhere: no signed record of the tag).
            with pytest.raises(ModelNotFoundError, match="acme/classifier:canary"):
                await client.infer("acme/classifier:canary", x)

        failures: list[BaseException] = []
        answers: list[float] = []
        running = True

        async def load(client: AsyncClient, model: str) -> None:
            x = np.ones((1, 4), np.float32)
            while running:
                try:
                    out = await client.infer_raw(model, x)
                    answers.append(float(next(iter(out.values()))[0, 0]))
                except Exception as exc:
                    failures.append(exc)

        async with AsyncClient(b.grpc_address) as client, asyncio.TaskGroup() as tg:
            for model in ("acme/classifier", "acme/classifier:stable") * 2:
                tg.create_task(load(client, model))
            await wait_until(lambda: len(answers) > 10, timeout=15, what="answers from v1")
            m2 = build_manifest(v2, "acme/classifier", "v2", PUBLISHER, created_at=3.0)
            d2 = (await push(publisher, v2, m2, PUBLISHER)).digest
            await publish_tag(publisher, PUBLISHER, "acme/classifier", "stable", d2, now=4.0)
            await wait_until(lambda: answers[-1] == 2.0, timeout=15, what="answers from v2")
            await wait_until(lambda: len(b.table.versions("acme/classifier")) == 1, timeout=15,
                             what="v1 retired")
            # Rollback: the tag moves back; B switches back without failing a request.
            await publish_tag(publisher, PUBLISHER, "acme/classifier", "stable", d1, now=5.0)
            await wait_until(lambda: answers[-1] == 1.0, timeout=15, what="answers from v1 again")
            await wait_until(lambda: [s.digest for s in b.table.versions("acme/classifier")]
                             == [d1], timeout=15, what="v2 retired after its linger")
            retired = len(answers)
            await wait_until(lambda: len(answers) >= retired + 20, timeout=15,
                             what="answers after v2 was retired")
            running = False
        assert failures == []
        assert {1.0, 2.0} <= set(answers)
        assert b.rollout is not None
        assert b.rollout.counters["rollouts"] == 3
        metrics = b.metrics.render().decode()
        assert 'swarm_registry_events_total{event="fetches_completed"} 2.0' in metrics
        assert 'swarm_rollout_events_total{event="rollouts"} 3.0' in metrics
        # B heard A's adverts over gossip, and counts them where an operator can see a flood.
        assert 'swarm_gossip_adverts_total{event="published"}' in metrics
        assert 'swarm_gossip_adverts_total{event="forged"} 0.0' in metrics
