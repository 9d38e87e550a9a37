"""Exported programs (.pt2) as served models; loading itself is swarm.modelfile's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swarm._errors import ModelLoadError
from swarm._types import Digest
from swarm.modelfile import load_program, program_spec
from swarm.node._runtime import TorchModel

__all__ = ["ExportedModel", "load_file"]


class ExportedModel(TorchModel):
    """A torch.export program with a dynamic batch dimension."""

    def __init__(self, name: str, data: bytes, device: torch.device, max_batch_size: int = 64,
                 digest: Digest | None = None) -> None:
        program = load_program(data)
        spec = program_spec(program, max_batch_size)
        module = program.module()
        if device.type != "cpu":
            module = module.to(device)
        super().__init__(name, digest or Digest.of(data), spec, module, device)

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        return super().example_inputs(batch_size)


def load_file(path: Path, name: str, device: torch.device, max_batch_size: int = 64) -> ExportedModel:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return ExportedModel(name, data, device, max_batch_size)
