"""Issue 11 item 5: model names a client makes up must not become Prometheus labels."""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node import Node
from swarm.node._metrics import OTHER, NodeMetrics
from swarm.node._runtime import Model

NAMES = 100
NAME_BYTES = 100_000


async def _metrics(node: Node) -> bytes:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{node.metrics_port}/metrics") as response:
        assert response.status == 200
        return await response.read()


async def test_unknown_model_names_do_not_grow_metrics(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp]]) as (_, (node,)):
        async with grpc.aio.insecure_channel(node.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            served = pb.ModelInferRequest(model_name=mlp.name)
            served.inputs.add(name="input", datatype="FP32", shape=[1, 512])
            served.raw_input_contents.append(np.zeros(512, np.float32).tobytes())
            await stub.ModelInfer(served, timeout=30)
            before = await _metrics(node)
            for i in range(NAMES):
                request = pb.ModelInferRequest(model_name=f"acme/m{i:03d}".ljust(NAME_BYTES, "x"))
                request.inputs.add(name="input", datatype="FP32", shape=[1, 512])
                request.raw_input_contents.append(np.zeros(512, np.float32).tobytes())
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(request, timeout=30)
                assert info.value.code() in (grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.INVALID_ARGUMENT), info.value
            await stub.ModelInfer(served, timeout=30)
        after = await _metrics(node)
        print(f"/metrics: {len(before)} bytes before {NAMES} made-up names of {NAME_BYTES} "
              f"bytes, {len(after)} after")
        assert len(after) - len(before) < 16_000
        text = after.decode()
        assert f'model="{mlp.name}",status="OK"' in text  # served models keep their label
        assert 'swarm_other_model_requests_total{reason="unknown"} 100.0' in text


def test_forwarded_model_labels_are_bounded() -> None:
    # Models served elsewhere keep their name up to the bound (a hostile swarm can
    # advertise any number of names); past it they count as "other", and the bound's
    # metric says so.
    metrics = NodeMetrics(max_forwarded_models=2)
    labels = [metrics.forwarded_label(n) for n in ("acme/x", "acme/y", "acme/x", "acme/z")]
    assert labels == ["acme/x", "acme/y", "acme/x", OTHER]
    assert b'swarm_other_model_requests_total{reason="label_limit"} 1.0' in metrics.render()
