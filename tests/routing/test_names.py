"""The release pins its built-ins' digests, in a module the SDK loads without torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from swarm._errors import ModelLoadError
from swarm._types import Digest
from swarm.node._builtins import BUILTINS, load_builtin
from swarm.node._generate import GENERATIVE_BUILTINS
from swarm.node._generate._llama import gguf_digest, smollm2_path
from swarm.node._runtime import Model
from swarm.routing import BUILTIN_DIGESTS


def test_pinned_digests_are_what_the_shipped_weights_give(minilm: Model, mlp: Model) -> None:
    """swarm/node/_builtins.py computes these from the package files and seeded weights."""
    assert BUILTIN_DIGESTS["builtin/minilm"] == minilm.digest
    assert BUILTIN_DIGESTS["builtin/mlp"] == mlp.digest
    assert set(BUILTIN_DIGESTS) == set(BUILTINS) | set(GENERATIVE_BUILTINS)
    assert BUILTIN_DIGESTS["builtin/smollm2"] == Digest(gguf_digest(smollm2_path()))


def test_the_pins_load_without_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import swarm.routing, sys; "
                               "print(len(swarm.routing.BUILTIN_DIGESTS), 'torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["3", "False"]


def test_a_node_refuses_a_builtin_whose_digest_is_not_the_pinned_one(
        monkeypatch: pytest.MonkeyPatch, mlp: Model) -> None:
    """A node computing another digest would serve a model no client reaches by name."""
    class Drifted(Model):
        name, digest, spec, device = mlp.name, BUILTIN_DIGESTS["builtin/minilm"], mlp.spec, mlp.device

        def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise AssertionError("never executed")

        def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
            raise AssertionError("never executed")

    monkeypatch.setitem(BUILTINS, "builtin/mlp", lambda device: Drifted())
    with pytest.raises(ModelLoadError, match="pins it to sha256:1083"):
        load_builtin("builtin/mlp", torch.device("cpu"))
