"""gRPC status codes <-> Swarm's exception tree: the grpc side of swarm._errors.STATUS.

The table itself lives in the shared vocabulary (keyed by status names, so that it
imports no grpc); this module only converts grpc's types, for every gRPC edge:
the SDK, the Router, the node's services and gateway, the registry client and service.
"""

from __future__ import annotations

import grpc

from swarm._errors import InferenceError, OverloadedError, code_of, error_for

__all__ = ["ADMISSION_HEADER", "DEPTH_TRAILER", "error_from_rpc", "status_of"]


# Call metadata of an attempt the provider may refuse past its admission bound (value "1").
ADMISSION_HEADER = "swarm-admission"
# Trailer of an admission refusal (RESOURCE_EXHAUSTED): the provider's queue depth, decimal.
DEPTH_TRAILER = "swarm-queue-depth"
# Longest depth trailer parsed (decimal digits; an int64 has at most 19).
_MAX_DEPTH_DIGITS = 19


def error_from_rpc(exc: grpc.aio.AioRpcError, target: str) -> InferenceError:
    """The Swarm error for a failed call to `target` (callers raise it `from exc`).

    RESOURCE_EXHAUSTED with a well-formed depth trailer is an admission refusal: an
    OverloadedError whose `queue_depth` is set. A malformed trailer is ignored (the
    error is then an ordinary overload, which counts as a failure).
    """
    code = exc.code()
    error = error_for(code.name, f"{target}: {exc.details() or code.name}")
    if isinstance(error, OverloadedError):
        error.queue_depth = _depth(exc.trailing_metadata())
    return error


def _depth(trailers: object) -> int | None:
    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key != DEPTH_TRAILER:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if text.isascii() and text.isdigit() and len(text) <= _MAX_DEPTH_DIGITS:
            return int(text)
        return None
    return None


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status a server aborts with for `error` (UNKNOWN for a name grpc lacks)."""
    return grpc.StatusCode.__members__.get(code_of(error), grpc.StatusCode.UNKNOWN)
