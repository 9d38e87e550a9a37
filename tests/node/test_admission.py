"""The node's admission: a swarm Router's attempt is refused past the queue bound, with
the depth in a trailer; any other client's request is queued as before."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from swarm._errors import ConfigError, OverloadedError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node._config import ModelOptions
from swarm.routing import ADMISSION_HEADER, DEPTH_TRAILER, GrpcCaller
from swarm.scheduler import Candidate
from tests.conftest import NodeFactory
from tests.node.fakes import GatedModel
from tests.waiting import wait_until

REFUSABLE = ((ADMISSION_HEADER, "1"),)


def request(model: GatedModel) -> pb.ModelInferRequest:
    a = np.ones((1, 2), np.float32)
    r = pb.ModelInferRequest(model_name=model.name)
    for name in ("a", "b"):
        r.inputs.add(name=name, datatype="FP32", shape=[1, 2])
        r.raw_input_contents.append(a.tobytes())
    return r


async def test_past_the_bound_a_refusable_request_is_refused_with_the_depth(
        start_node: NodeFactory) -> None:
    model = GatedModel(max_batch_size=1)
    # A target so small that one queued item is the bound (never below one batch).
    options = {model.name: ModelOptions(admission_wait=1e-9)}
    async with start_node([model], options) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):  # the service rate gets measured
            await stub.ModelInfer(request(model), timeout=20, metadata=REFUSABLE)
        model.gate.clear()
        model.running.clear()
        running = asyncio.ensure_future(stub.ModelInfer(request(model), timeout=20))
        await wait_until(model.running.is_set, timeout=10)
        # Nothing waits yet: admitted (and waits behind the running one).
        queued = asyncio.ensure_future(stub.ModelInfer(request(model), timeout=20,
                                                       metadata=REFUSABLE))
        await wait_until(lambda: node.table.resolve(model.name, "").batcher.queue_depth == 1,
                         timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(request(model), timeout=20, metadata=REFUSABLE)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(refused.value.trailing_metadata() or ())[DEPTH_TRAILER] == "1"
        # What the Router's GrpcCaller makes of it: a refusal carrying the depth.
        caller = GrpcCaller(tls=False)
        candidate = Candidate(peer=node.identity.peer_id, endpoint=node.grpc_address,
                              expected_latency=0.01, price=0.0, score=0.0, admissible=True)
        try:
            with pytest.raises(OverloadedError) as overloaded:
                await caller(candidate, request(model), 20.0)
            assert overloaded.value.queue_depth == 1
        finally:
            await caller.close()
        # A client that does not allow refusal (tritonclient, the Router's last attempt).
        plain = asyncio.ensure_future(stub.ModelInfer(request(model), timeout=20))
        await wait_until(lambda: node.table.resolve(model.name, "").batcher.queue_depth == 2,
                         timeout=10)
        model.gate.set()
        for r in await asyncio.gather(running, queued, plain):
            assert list(r.outputs[0].shape) == [1, 2]
        assert model.batches.count(1) == 3 + 3


@pytest.mark.parametrize("wait", [-0.1, float("inf"), float("nan")])
def test_admission_wait_is_checked(wait: float) -> None:
    with pytest.raises(ConfigError, match="admission_wait"):
        ModelOptions(admission_wait=wait)
