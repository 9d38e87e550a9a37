"""Swarm: decentralized AI inference.

    import swarm
    client = swarm.Client("127.0.0.1:7070")
    client.embed(["hello world"])

Packages, lowest layer first (README "Layout and layers"): protocol/, modelfile/,
scheduler/, routing/, staking/, registry/, autoscale/, node/ (the provider agent),
client/ (the SDK), simnet/, cli/ (the `swarm` command). Implementation lives in
`_*.py` modules; what is re-exported here is the public API. The SDK classes load on
first use, so command lines that import `swarm` for its errors or version stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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

_CLIENT = {"AsyncClient", "Client", "ModelInfo", "TensorInfo"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        import swarm.client

        value = getattr(swarm.client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")

