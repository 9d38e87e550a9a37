"""A node as a gateway: gRPC forwarding and the OpenAI-compatible API, routed by the scheduler."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import openai
import pytest
import tritonclient.grpc.aio as tca
from sentence_transformers import SentenceTransformer

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node import Node
from swarm.node._builtins import minilm_dir
from swarm.node._runtime import Model
from swarm.routing import FORWARDED

TEXTS = ["hello world", "gateways route requests to providers"]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.asarray(SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS))


async def until_seen(gateway: Node, model: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while gateway.router is None or not gateway.router.view.providers_of_name(model):
        assert time.monotonic() < deadline, f"gateway never saw a provider of {model}"
        await asyncio.sleep(0.05)


async def test_grpc_requests_for_other_models_are_forwarded(
        memory_swarm: Any, minilm: Model, mlp: Model, reference: np.ndarray) -> None:
    # Node 0 serves only the MLP; node 1 serves MiniLM.
    async with memory_swarm([[mlp], [minilm]]) as (_, nodes):
        gateway = nodes[0]
        await until_seen(gateway, "builtin/minilm")
        client = tca.InferenceServerClient(gateway.grpc_address)
        try:
            text = tca.InferInput("text", [len(TEXTS)], "BYTES")
            text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
            result = await client.infer("builtin/minilm", [text])
            np.testing.assert_allclose(result.as_numpy("embedding"), reference, atol=1e-4)
            assert result.get_response().model_version == str(minilm.digest)
            meta = await client.get_model_metadata("builtin/minilm", as_json=True)
            assert meta["outputs"][0]["name"] == "embedding"
            assert await client.is_model_ready("builtin/minilm")
            assert not await client.is_model_ready("no/such-model")
        finally:
            await client.close()
        text = await _metrics_text(gateway)
        assert 'status="FORWARDED"' in text


async def _metrics_text(node: Node) -> str:
    return node.metrics.render().decode()


async def test_forwarded_requests_are_never_forwarded_again(memory_swarm: Any, mlp: Model,
                                                            minilm: Model) -> None:
    async with memory_swarm([[mlp], [minilm]]) as (_, nodes):
        await until_seen(nodes[0], "builtin/minilm")
        request = pb.ModelInferRequest(model_name="builtin/minilm")
        request.inputs.add(name="text", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(b"\x02\x00\x00\x00hi")
        request.parameters[FORWARDED].bool_param = True
        async with grpc.aio.insecure_channel(nodes[0].grpc_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_model_through_gateway_is_not_found(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp]]) as (_, nodes):
        request = pb.ModelInferRequest(model_name="acme/nothing")
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.raw_input_contents.append(b"\x00\x00\x00\x00")
        async with grpc.aio.insecure_channel(nodes[0].grpc_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_openai_client_gets_embeddings_through_a_gateway(
        memory_swarm: Any, minilm: Model, mlp: Model, reference: np.ndarray) -> None:
    async with memory_swarm([[mlp], [minilm]], options=[{"http_port": 0}, {}]) as (_, nodes):
        gateway = nodes[0]
        await until_seen(gateway, "builtin/minilm")
        base = f"http://127.0.0.1:{gateway.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
        try:
            # The openai client asks for base64 by default; ask for floats too.
            for kwargs in ({}, {"encoding_format": "float"}):
                response = await client.embeddings.create(model="builtin/minilm", input=TEXTS,
                                                          **kwargs)
                got = np.array([d.embedding for d in response.data], dtype=np.float32)
                np.testing.assert_allclose(got, reference, atol=1e-4)
                assert [d.index for d in response.data] == [0, 1]
                assert response.model == "builtin/minilm"
            single = await client.embeddings.create(model="builtin/minilm", input="hello world")
            np.testing.assert_allclose(single.data[0].embedding, reference[0], atol=1e-4)
            models = await client.models.list()
            ids = {m.id for m in models.data}
            assert {"builtin/minilm", "builtin/mlp"} <= ids
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="no/such-model", input="x")
            with pytest.raises(openai.BadRequestError):
                await client.embeddings.create(model="builtin/minilm", input=[])
        finally:
            await client.close()
