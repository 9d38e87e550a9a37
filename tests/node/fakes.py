"""A test model whose timing the test controls."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import torch

from swarm._types import Digest
from swarm.node._runtime import Model, ModelSpec, TensorSpec

__all__ = ["GatedModel"]


class GatedModel(Model):
    """Two FP32 [-1, 2] inputs a and b; out = a + b. Executions block while `gate` is clear.

    `batches` records each execution's size; `running` is set once one has started.
    """

    def __init__(self, name: str = "test/gated", max_batch_size: int = 8) -> None:
        self.name = name
        self.digest = Digest.of(name.encode())
        self.spec = ModelSpec((TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 2))),
                              (TensorSpec("out", "FP32", (-1, 2)),), max_batch_size, "test")
        self.device = torch.device("cpu")
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.running = threading.Event()

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["a"]))
        self.running.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return {"out": inputs["a"] + inputs["b"]}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((batch_size, 2), np.float32)
        return {"a": zeros, "b": zeros}
