"""The exception tree. Every error Swarm raises derives from SwarmError.

    SwarmError
    ├── ConfigError              bad configuration (file, environment, flags)
    ├── ClosedError              use of a closed client, node, store or writer
    ├── InvalidReferenceError    a malformed digest, model reference or peer id (also a ValueError)
    ├── ModelLoadError           a model could not be loaded safely
    │   └── UnsafeModelError     an archive would execute code or has unexpected members
    ├── IntegrityError           a digest or signature does not match
    ├── InferenceError           a request to a node failed; `code` is its gRPC status name
    │   ├── InvalidInputError    INVALID_ARGUMENT (never retried)
    │   ├── ModelNotFoundError   NOT_FOUND
    │   ├── OverloadedError      RESOURCE_EXHAUSTED
    │   ├── DeadlineExceededError DEADLINE_EXCEEDED
    │   ├── UnavailableError     UNAVAILABLE, CANCELLED (transport errors, draining nodes)
    │   ├── PermissionDeniedError PERMISSION_DENIED, UNAUTHENTICATED
    │   ├── ConflictError        ABORTED, FAILED_PRECONDITION (concurrent or stale writes)
    │   └── DataLossError        DATA_LOSS (also an IntegrityError)
    └── NoProviderError          no provider can take the request (scheduler)

`STATUS` is the one table between gRPC status code names and this tree, read both
ways: `error_for(code, message)` builds the error a received status stands for,
`code_of(error)` is the status an error is sent as. It names codes as strings so
that this module imports nothing; swarm.routing adapts it to grpc.StatusCode.

ValueError stays for programming errors (a component's own config dataclass given
an impossible value); what a user, a file or a peer can get wrong raises from this tree.
Foreign errors (grpc.RpcError, OSError, ...) are translated at the edge with
`raise ... from exc`; code never inspects error message text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

__all__ = [
    "STATUS",
    "ClosedError",
    "ConfigError",
    "ConflictError",
    "DataLossError",
    "DeadlineExceededError",
    "InferenceError",
    "IntegrityError",
    "InvalidInputError",
    "InvalidReferenceError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NoProviderError",
    "OverloadedError",
    "PermissionDeniedError",
    "SwarmError",
    "UnavailableError",
    "UnsafeModelError",
    "code_of",
    "error_class_for",
    "error_for",
    "first_failure",
]

_E = TypeVar("_E", bound=BaseException)


class SwarmError(Exception):
    """Root of every Swarm error."""


class ConfigError(SwarmError):
    """The configuration is invalid."""


class ClosedError(SwarmError):
    """A client, node, store or writer was used after it was closed (or stopped)."""


class InvalidReferenceError(SwarmError, ValueError):
    """A digest, model reference or peer id is malformed.

    Also a ValueError: these are raised by value constructors (`Digest(...)`,
    `ModelRef.parse`), where a ValueError is what Python code expects.
    """


class ModelLoadError(SwarmError):
    """A model could not be loaded."""


class UnsafeModelError(ModelLoadError):
    """A model archive would run code when loaded, or holds unexpected members."""


class IntegrityError(SwarmError):
    """Content does not match its digest, or a signature does not verify."""


class InferenceError(SwarmError):
    """A request to a node failed. `code` is the gRPC status code name.

    Without an explicit `code`, the error's class decides it (see STATUS).
    """

    code: str

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else _sent_as(type(self), "INTERNAL")


class InvalidInputError(InferenceError):
    """The request is malformed or does not match the model (INVALID_ARGUMENT)."""


class ModelNotFoundError(InferenceError):
    """No such model or version here (NOT_FOUND)."""


class OverloadedError(InferenceError):
    """The model's queue is full or a limit was hit (RESOURCE_EXHAUSTED).

    `queue_depth` is set on a provider's admission refusal (swarm.scheduler.admits): its
    queue was past its bound for a request that allowed a refusal, and this is the depth
    it reported (unauthenticated: a claim about itself only). None: any other overload.
    """

    def __init__(self, message: str, *, code: str | None = None,
                 queue_depth: int | None = None) -> None:
        super().__init__(message, code=code)
        self.queue_depth = queue_depth


class DeadlineExceededError(InferenceError):
    """The request's deadline passed (DEADLINE_EXCEEDED)."""


class UnavailableError(InferenceError):
    """The provider cannot be reached or is shutting down (UNAVAILABLE, CANCELLED)."""


class PermissionDeniedError(InferenceError):
    """The caller's key may not do this, e.g. write another owner's namespace (PERMISSION_DENIED)."""


class ConflictError(InferenceError):
    """A write lost to another: a blob already being written (ABORTED), a tag record
    older than the one held (FAILED_PRECONDITION)."""


class DataLossError(InferenceError, IntegrityError):
    """A node reported corrupted or mismatching content (DATA_LOSS).

    Both an InferenceError (a request failed with a status) and an IntegrityError
    (what callers of a local digest check already catch).
    """


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


# gRPC status code name <-> class. Received: the first InferenceError row with the code
# gives the class (codes not listed: InferenceError carrying that code). Sent: the row of
# the error's nearest class that has one; an InferenceError is sent as its own `code`.
# The rows after INTERNAL/UNKNOWN are errors raised locally, never received as such.
STATUS: tuple[tuple[str, type[SwarmError]], ...] = (
    ("INVALID_ARGUMENT", InvalidInputError),
    ("NOT_FOUND", ModelNotFoundError),
    ("RESOURCE_EXHAUSTED", OverloadedError),
    ("DEADLINE_EXCEEDED", DeadlineExceededError),
    ("UNAVAILABLE", UnavailableError),
    ("CANCELLED", UnavailableError),
    ("PERMISSION_DENIED", PermissionDeniedError),
    ("UNAUTHENTICATED", PermissionDeniedError),
    ("ABORTED", ConflictError),
    ("FAILED_PRECONDITION", ConflictError),
    ("DATA_LOSS", DataLossError),
    ("INTERNAL", InferenceError),
    ("UNKNOWN", InferenceError),
    # A malformed name from a client is its mistake, as any other bad input.
    ("INVALID_ARGUMENT", InvalidReferenceError),
    ("DATA_LOSS", IntegrityError),
    # A closing node and a swarm with no taker alike: try again (elsewhere, later).
    ("UNAVAILABLE", ClosedError),
    ("UNAVAILABLE", NoProviderError),
)

_RECEIVED: dict[str, type[InferenceError]] = {}
_SENT: dict[type, str] = {}
for _code, _cls in STATUS:
    if issubclass(_cls, InferenceError):
        _RECEIVED.setdefault(_code, _cls)
    _SENT.setdefault(_cls, _code)
del _code, _cls


def _sent_as(cls: type[BaseException], default: str) -> str:
    for base in cls.__mro__:
        code = _SENT.get(base)
        if code is not None:
            return code
    return default


def error_class_for(code: str) -> type[InferenceError]:
    """The class of the error a received status `code` (a gRPC status name) stands for."""
    return _RECEIVED.get(code, InferenceError)


def error_for(code: str, message: str) -> InferenceError:
    """The error for a received status: `error_for("RESOURCE_EXHAUSTED", m)` is an OverloadedError."""
    return error_class_for(code)(message, code=code)


def code_of(error: BaseException) -> str:
    """The gRPC status name `error` is sent as (INTERNAL for other Swarm errors,
    UNKNOWN for exceptions from outside the tree)."""
    if isinstance(error, InferenceError):
        return error.code
    return _sent_as(type(error), "INTERNAL" if isinstance(error, SwarmError) else "UNKNOWN")


# Failures a first_failure note names one by one; the rest are counted.
_NOTED = 10


def first_failure(group: BaseExceptionGroup[_E]) -> _E:
    """The first exception of a failed task group, with a note naming every other one.

    Callers catch one exception as itself (an OverloadedError, not a group of them),
    yet the failures that came with it must not vanish: they ride on `__notes__`.
    """
    first, *others = _leaves(group)
    if others:
        shown = "; ".join(f"{type(e).__name__}: {e}" for e in others[:_NOTED])
        more = f"; and {len(others) - _NOTED} more" if len(others) > _NOTED else ""
        first.add_note(f"{len(others)} other failure(s) in the same task group: {shown}{more}")
    return first


def _leaves(group: BaseExceptionGroup[_E]) -> Iterator[_E]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
