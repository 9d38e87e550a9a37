"""gRPC status codes <-> Swarm's exception tree: the grpc side of swarm._errors.STATUS.

The table itself lives in the shared vocabulary (keyed by status names, so that it
imports no grpc); this module only converts grpc's types, for every gRPC edge:
the SDK, the Router, the node's services and gateway, the registry client and service.
"""

from __future__ import annotations

import grpc

from swarm._errors import InferenceError, code_of, error_for

__all__ = ["error_from_rpc", "status_of"]


def error_from_rpc(exc: grpc.aio.AioRpcError, target: str) -> InferenceError:
    """The Swarm error for a failed call to `target` (callers raise it `from exc`)."""
    code = exc.code()
    return error_for(code.name, f"{target}: {exc.details() or code.name}")


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status a server aborts with for `error` (UNKNOWN for a name grpc lacks)."""
    return grpc.StatusCode.__members__.get(code_of(error), grpc.StatusCode.UNKNOWN)
