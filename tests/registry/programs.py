"""Tiny torch.export programs for registry tests: x * factor, with a dynamic batch dim."""

from __future__ import annotations

import io
from pathlib import Path

import torch


class Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(factor), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x * self.factor
        return out


def export(path: Path, factor: float) -> Path:
    """Write the program computing `x * factor` (x: [batch, 4], batch 1..16) to `path`."""
    program = torch.export.export(Scale(factor).eval(), (torch.zeros(2, 4),), dynamic_shapes={
        "x": {0: torch.export.Dim("batch", min=1, max=16)}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())
    return path
