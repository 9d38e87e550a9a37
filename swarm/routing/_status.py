"""gRPC status codes <-> Swarm's exception tree."""

from __future__ import annotations

import grpc

from swarm._errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)

__all__ = ["error_from_rpc"]

_ERRORS: dict[grpc.StatusCode, type[InferenceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: UnavailableError,
}


def error_from_rpc(exc: grpc.aio.AioRpcError, target: str) -> InferenceError:
    code = exc.code()
    cls = _ERRORS.get(code, InferenceError)
    message = f"{target}: {exc.details() or code.name}"
    if cls is InferenceError:
        return InferenceError(message, code=code.name)
    return cls(message)
