"""Swarm: decentralized AI inference.

    import swarm
    client = swarm.Client("127.0.0.1:7070")
    client.embed(["hello world"])

Packages: node/ (the provider agent), client/ (SDK and CLI), protocol/ (identity,
gossip, membership), scheduler/, registry/, simnet/. Implementation lives in
`_*.py` modules; what is re-exported here is the public API.
"""

from __future__ import annotations

__version__ = "0.1.0"

from swarm._errors import (
    ClosedError,
    ConfigError,
    ConflictError,
    DataLossError,
    DeadlineExceededError,
    InferenceError,
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    ModelLoadError,
    ModelNotFoundError,
    NoProviderError,
    OverloadedError,
    PermissionDeniedError,
    SwarmError,
    UnavailableError,
    UnsafeModelError,
)
from swarm._types import Digest, ModelRef, PeerId
from swarm.client import AsyncClient, Client, ModelInfo, TensorInfo

__all__ = [
    "AsyncClient",
    "Client",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DataLossError",
    "DeadlineExceededError",
    "Digest",
    "InferenceError",
    "IntegrityError",
    "InvalidInputError",
    "InvalidReferenceError",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRef",
    "NoProviderError",
    "OverloadedError",
    "PeerId",
    "PermissionDeniedError",
    "SwarmError",
    "TensorInfo",
    "UnavailableError",
    "UnsafeModelError",
    "__version__",
]
