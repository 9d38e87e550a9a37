"""GrpcCaller at the edge: what it makes of a call that grpc.aio cancels under it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from swarm._errors import UnavailableError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm.protocol import Identity
from swarm.routing import GrpcCaller
from swarm.scheduler import Candidate


class ClosedUnderTheCall:
    """A stub whose call is cancelled by its channel closing (what grpc.aio does to the
    calls in flight on a channel that is closed)."""

    async def ModelInfer(self, request: Any, timeout: float, metadata: Any = None) -> Any:
        raise asyncio.CancelledError


class Slow:
    async def ModelInfer(self, request: Any, timeout: float, metadata: Any = None) -> Any:
        await asyncio.sleep(3600)


def caller_with(stub: Any) -> GrpcCaller:
    caller = GrpcCaller(tls=False)

    async def fixed(candidate: Candidate) -> Any:
        return stub

    caller._stub = fixed  # type: ignore[method-assign]
    return caller


CANDIDATE = Candidate(peer=Identity.generate().peer_id, endpoint="127.0.0.1:1",
                      expected_latency=0.01, price=0.0, score=0.0)


async def test_a_call_cancelled_by_its_channel_is_unavailable_not_lost() -> None:
    """Before: the CancelledError escaped into the caller's task, and a TaskGroup of
    requests (AsyncClient.map) dropped that request without an error."""
    caller = caller_with(ClosedUnderTheCall())
    with pytest.raises(UnavailableError, match="closed under the call"):
        await caller(CANDIDATE, pb.ModelInferRequest(model_name="m"), 5.0)


async def test_cancelling_the_request_still_cancels_it() -> None:
    caller = caller_with(Slow())
    task = asyncio.create_task(caller(CANDIDATE, pb.ModelInferRequest(model_name="m"), 5.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
