"""The exception tree. Every error Swarm raises derives from SwarmError.

    SwarmError
    ├── ConfigError              bad configuration (file, environment, flags)
    ├── ModelLoadError           a model could not be loaded safely
    │   └── UnsafeModelError     an archive would execute code or has unexpected members
    ├── IntegrityError           a digest or signature does not match
    ├── InferenceError           a request failed; `code` is its gRPC status name
    │   ├── InvalidInputError    INVALID_ARGUMENT (never retried)
    │   ├── ModelNotFoundError   NOT_FOUND
    │   ├── OverloadedError      RESOURCE_EXHAUSTED
    │   ├── DeadlineExceededError DEADLINE_EXCEEDED
    │   └── UnavailableError     UNAVAILABLE (transport errors, draining nodes)
    └── NoProviderError          no provider can take the request (scheduler)

Foreign errors (grpc.RpcError, OSError, ...) are translated at the edge with
`raise ... from exc`; code never inspects error message text.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ConfigError",
    "DeadlineExceededError",
    "InferenceError",
    "IntegrityError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NoProviderError",
    "OverloadedError",
    "SwarmError",
    "UnavailableError",
    "UnsafeModelError",
]


class SwarmError(Exception):
    """Root of every Swarm error."""


class ConfigError(SwarmError):
    """The configuration is invalid."""


class ModelLoadError(SwarmError):
    """A model could not be loaded."""


class UnsafeModelError(ModelLoadError):
    """A model archive would run code when loaded, or holds unexpected members."""


class IntegrityError(SwarmError):
    """Content does not match its digest, or a signature does not verify."""


class InferenceError(SwarmError):
    """An inference request failed. `code` is the gRPC status code name."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInputError(InferenceError):
    """The request is malformed or does not match the model (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class ModelNotFoundError(InferenceError):
    """No such model or version here (NOT_FOUND)."""

    code = "NOT_FOUND"


class OverloadedError(InferenceError):
    """The model's queue is full or a limit was hit (RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(InferenceError):
    """The request's deadline passed (DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


class UnavailableError(InferenceError):
    """The provider cannot be reached or is shutting down (UNAVAILABLE)."""

    code = "UNAVAILABLE"


class NoProviderError(SwarmError):
    """No provider in the peer view can serve the request within its constraints.

    `reasons` counts providers refused per reason ("price", "draining", "breaker", ...);
    `cheapest` is the lowest price among those refused for price, if any.
    """

    def __init__(self, message: str, *, reasons: Mapping[str, int] | None = None,
                 cheapest: float | None = None) -> None:
        super().__init__(message)
        self.reasons = dict(reasons or {})
        self.cheapest = cheapest
