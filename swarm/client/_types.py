"""What the SDK returns about models."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelInfo", "TensorInfo"]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    # Content digests ("sha256:...") of the versions served; the first is the default.
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int = 0
