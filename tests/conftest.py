"""Shared fixtures: built-in models loaded once per session, nodes started in-process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from swarm.node import Node, NodeConfig
from swarm.node._builtins import MLP, MiniLM
from swarm.node._config import ModelOptions
from swarm.node._runtime import Model

torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


@pytest.fixture(scope="session")
def minilm() -> Model:
    return MiniLM(torch.device("cpu"))


@pytest.fixture(scope="session")
def mlp() -> Model:
    return MLP(torch.device("cpu"))


NodeFactory = Callable[..., AbstractAsyncContextManager[Node]]


@pytest.fixture
def start_node(tmp_path: Path) -> NodeFactory:
    """`async with start_node(models=[...], **config) as node:` on loopback, free ports."""
    counter = 0

    @asynccontextmanager
    async def factory(models: list[Model], options: dict[str, ModelOptions] | None = None,
                      **overrides: Any) -> AsyncIterator[Node]:
        nonlocal counter
        counter += 1
        overrides.setdefault("device", "cpu")
        config = NodeConfig.local(tmp_path / f"node{counter}", models=options or {}, **overrides)
        async with Node(config, models=models) as node:
            yield node

    return factory


class SlowModel(Model):
    """Delegates to `inner` (same digest and spec) but takes `delay` seconds longer per batch."""

    def __init__(self, inner: Model, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.name = inner.name
        self.digest = inner.digest
        self.spec = inner.spec
        self.device = inner.device

    def execute(self, inputs: Any) -> Any:
        import time

        time.sleep(self.delay)  # deliberate: the slowness is what tests of routing measure
        return self.inner.execute(inputs)

    def example_inputs(self, batch_size: int) -> Any:
        return self.inner.example_inputs(batch_size)


@pytest.fixture
def memory_swarm(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """`async with memory_swarm([[models], ...], **config) as (network, nodes)`: in-process
    nodes that discover each other over one in-memory gossip network."""
    from swarm.protocol import Gossip, Identity
    from swarm.protocol.testing import MemoryNetwork

    @asynccontextmanager
    async def factory(model_sets: list[list[Model]], *, seed: int = 0,
                      prices: list[int] | None = None, advert_interval: float = 0.5,
                      options: list[dict[str, Any]] | None = None,
                      ) -> AsyncIterator[tuple[MemoryNetwork, list[Node]]]:
        network = MemoryNetwork(seed=seed)

        async def gossip(identity: Identity, config: NodeConfig) -> Gossip:
            return network.join(identity.peer_id)

        nodes: list[Node] = []
        try:
            for i, models in enumerate(model_sets):
                config = NodeConfig.local(
                    tmp_path / f"swarm{i}", device="cpu", p2p_port=0,
                    advert_interval=advert_interval,
                    price_per_request=(prices[i] if prices else 0),
                    **(options[i] if options else {}))
                node = Node(config, models=models, gossip_factory=gossip)
                await node.start()
                nodes.append(node)
            yield network, nodes
        finally:
            for node in nodes:
                if node.state.value != "stopped":
                    await node.stop()

    return factory
