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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
