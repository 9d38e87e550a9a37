"""Issue 11 item 7: a call the client gave up on stops its work (HTTP disconnect, gRPC cancel)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import aiohttp
import grpc
import numpy as np
import torch

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import encode_bytes_elements
from swarm._types import Digest
from swarm.node import Node
from swarm.node._runtime import Model, ModelSpec, TensorSpec
from tests.waiting import wait_until

BATCH = 4


class GatedTextModel(Model):
    """Texts in, 4 floats per text out; executions block while `gate` is clear."""

    def __init__(self) -> None:
        self.name = "test/text"
        self.digest = Digest.of(b"test/text")
        self.spec = ModelSpec((TensorSpec("text", "BYTES", (-1,)),),
                              (TensorSpec("embedding", "FP32", (-1, 4)),), BATCH, "test")
        self.device = torch.device("cpu")
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.running = threading.Event()

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["text"]))
        self.running.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return {"embedding": np.ones((len(inputs["text"]), 4), np.float32)}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"text": np.array([b"x"] * batch_size, dtype=object)}


def _cancelled(node: Node, model: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "swarm_requests_total", {"model": model, "status": "CANCELLED"})
    return value or 0.0


def _infer_request(model: str, text: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes_elements([text]))
    return request


async def test_cancelled_calls_stop_their_work(start_node: Any) -> None:
    model = GatedTextModel()
    async with start_node([model], http_port=0) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        # HTTP: ten batches asked for; the client hangs up while the first one executes.
        texts = [f"text {i}" for i in range(10 * BATCH)]

        async def embed() -> None:
            async with aiohttp.ClientSession() as http:
                await http.post(f"http://127.0.0.1:{node.http_port}/v1/embeddings",
                                json={"model": model.name, "input": texts})

        client = asyncio.create_task(embed())
        await wait_until(asyncio.to_thread(model.running.wait, 10), what="the first batch to run")
        client.cancel()  # closes the connection
        await wait_until(lambda: _cancelled(node, model.name) >= 1,
                         what="the node to notice the hang-up")
        model.gate.set()
        await stub.ModelInfer(_infer_request(model.name, b"after"), timeout=30)
        print(f"HTTP: {len(model.batches) - 1} of 10 batches computed for a request whose "
              "client hung up during the first")
        assert model.batches == [BATCH, 1]  # the one running, then the next caller's

        # gRPC: a call cancelled while queued behind a busy model never executes.
        model.gate.clear()
        model.running.clear()
        model.batches.clear()
        busy = stub.ModelInfer(_infer_request(model.name, b"busy"), timeout=30)
        await wait_until(asyncio.to_thread(model.running.wait, 10), what="the busy batch to run")
        queued = stub.ModelInfer(_infer_request(model.name, b"given up"), timeout=30)
        served = node.table.resolve(model.name)
        await wait_until(lambda: served.batcher.queue_depth == 1, what="the call to queue")
        queued.cancel()
        await wait_until(lambda: _cancelled(node, model.name) >= 2, what="the node to see it")
        model.gate.set()
        await busy
        await stub.ModelInfer(_infer_request(model.name, b"after"), timeout=30)
        assert model.batches == [1, 1]
