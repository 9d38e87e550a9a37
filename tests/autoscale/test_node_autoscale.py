"""Three in-process nodes: A stores a registry version, B serves it (the operator's choice),
C autoscales. Traffic makes the model hot: C pulls it and serves it (a new replica); the
traffic stops: after the cool-down C releases it, B keeps it (the minimum). The status RPC
and the metrics say what happened and why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from swarm.autoscale import AutoscaleConfig
from swarm.client import AsyncClient
from swarm.node import Node, NodeConfig
from swarm.protocol import Gossip, Identity
from swarm.protocol.testing import MemoryNetwork
from swarm.registry import RegistryClient, RegistryConfig, RolloutConfig
from swarm.registry._publish import build_manifest, publish_tag, push
from tests.registry.programs import export
from tests.registry.support import PUBLISHER
from tests.waiting import wait_until

# Any traffic counts as hot (target load far below it); short delays, in seconds.
SCALE = AutoscaleConfig(enabled=True, interval=0.2, target_load=0.001, up_delay=0.4,
                        panic_delay=0.2, settle=0.5, down_delay=1.5, min_replicas=1)


async def test_hot_model_gains_a_replica_and_releases_it_when_quiet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = MemoryNetwork(0)

    async def gossip(identity: Identity, config: NodeConfig) -> Gossip:
        return network.join(identity.peer_id)

    def node(i: int, **settings: object) -> Node:
        config = NodeConfig.local(tmp_path / f"n{i}", device="cpu", p2p_port=0,
                                  advert_interval=0.3, **settings)  # type: ignore[arg-type]
        return Node(config, gossip_factory=gossip,
                    registry_config=RegistryConfig.local(jitter=0.0, replication_factor=1),
                    rollout_config=RolloutConfig(linger=0.2))

    program = export(tmp_path / "v1.pt2", 1.0)
    async with node(0) as a, node(1, serve=("acme/classifier:stable",)) as b, \
            node(2, autoscale=SCALE) as c, RegistryClient(a.grpc_address) as publisher:
        manifest = build_manifest(program, "acme/classifier", "v1", PUBLISHER, created_at=1.0)
        digest = (await push(publisher, program, manifest, PUBLISHER)).digest
        await publish_tag(publisher, PUBLISHER, "acme/classifier", "stable", digest, now=2.0)
        await wait_until(lambda: any(s.digest == digest for s in b.table), timeout=20,
                         what="B serving the version")
        assert not any(s.digest == digest for s in c.table)  # quiet: nobody scales

        running = True

        async def traffic(client: AsyncClient) -> None:
            x = np.ones((1, 4), np.float32)
            while running:
                await client.infer_raw("acme/classifier", x)

        async with AsyncClient(b.grpc_address) as client, asyncio.TaskGroup() as tg:
            for _ in range(2):
                tg.create_task(traffic(client))
            await wait_until(lambda: any(s.digest == digest for s in c.table), timeout=20,
                             what="C loading the hot model")
            running = False
        assert c.autoscaler is not None
        assert c.autoscaler.managed == {digest}
        status = c.status()
        assert status.autoscale
        assert [(e.action, e.outcome) for e in status.scaling] == [("load", "started"),
                                                                   ("load", "done")]
        assert "lottery" in status.scaling[0].reason
        # A registry version loads again on a device (a local replica's path).
        instance = await asyncio.to_thread(c.sources[digest], "cpu")
        assert (instance.digest, instance.spec) == (digest, c.table.resolve("acme/classifier").model.spec)
        instance.close()
        # C's advert says the replica is its autoscaler's; B's is the operator's.
        assert [o.autoscaled for o in c.advert().models] == [True]
        assert [o.autoscaled for o in b.advert().models] == [False]

        # Quiet again: C releases its replica after the cool-down; B keeps serving.
        await wait_until(lambda: not any(s.digest == digest for s in c.table), timeout=20,
                         what="C releasing the replica")
        assert any(s.digest == digest for s in b.table)
        assert digest not in c.sources  # withdrawn: no instance of it loads any more
        assert [e.action for e in c.status().scaling][-2:] == ["unload", "unload"]
        # `swarm-node status` asks the running node over its status RPC.
        from swarm.node._cli import main

        assert await asyncio.to_thread(main, ["status", "--address", c.grpc_address]) == 0
        out = capsys.readouterr().out
        assert "autoscale  on" in out
        assert "load simnet" not in out
        assert "load acme/classifier" in out
        assert "why: demand" in out
        metrics = c.metrics.render().decode()
        assert 'swarm_autoscale_actions_total{action="load",outcome="done"} 1.0' in metrics
        assert 'swarm_autoscale_actions_total{action="unload",outcome="done"} 1.0' in metrics
