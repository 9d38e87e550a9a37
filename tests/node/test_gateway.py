"""A node as a gateway: gRPC forwarding and the OpenAI-compatible API, routed by the scheduler."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
import openai
import pytest
import tritonclient.grpc.aio as tca
from sentence_transformers import SentenceTransformer

import swarm
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node import Node
from swarm.node._builtins import minilm_dir
from swarm.node._runtime import Model
from swarm.routing import FORWARDED
from tests.waiting import wait_until

TEXTS = ["hello world", "gateways route requests to providers"]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.asarray(SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS))


async def until_seen(gateway: Node, model: str) -> None:
    await wait_until(lambda: gateway.router is not None
                     and gateway.router.view.providers_of_name(model),
                     timeout=10, what=f"the gateway to see a provider of {model}")


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


async def test_every_oip_call_for_a_forwarded_model_works_through_a_gateway(
        memory_swarm: Any, minilm: Model, mlp: Model, reference: np.ndarray) -> None:
    """Issue 17 item 1: node A serves MiniLM, node B only the MLP; B is the gateway.

    The SDK, the CLI and tritonclient ask B for ModelConfig as well as ModelMetadata,
    ModelReady, ModelInfer, ModelStreamInfer and ModelStatistics: all must work.
    """
    async with memory_swarm([[mlp], [minilm]]) as (_, nodes):
        b = nodes[0]
        await until_seen(b, "builtin/minilm")

        def sdk_embed() -> np.ndarray:
            with swarm.Client(b.grpc_address) as client:
                return client.embed(TEXTS)

        np.testing.assert_allclose(await asyncio.to_thread(sdk_embed), reference, atol=1e-4)

        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarm.cli", "infer", "--node", b.grpc_address,
            "builtin/minilm", "--text", "hello world",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        np.testing.assert_allclose(json.loads(out)["embedding"][0], reference[0], atol=1e-4)

        seen = await asyncio.to_thread(_triton_calls, b.grpc_address)
        assert seen["config"]["name"] == "builtin/minilm"
        assert seen["config"]["max_batch_size"] == minilm.spec.max_batch_size
        assert seen["config"]["parameters"]["digest"]["string_value"] == str(minilm.digest)
        assert seen["ready"] is True
        assert seen["metadata"]["outputs"][0]["name"] == "embedding"
        np.testing.assert_allclose(seen["infer"], reference, atol=1e-4)
        np.testing.assert_allclose(seen["stream"], reference, atol=1e-4)
        # Statistics of a forwarded model are the gateway's own: what went through it.
        (stats,) = seen["statistics"]["model_stats"]
        assert stats["name"] == "builtin/minilm"
        assert stats["version"] == str(minilm.digest)
        assert int(stats["inference_count"]) >= 3 * len(TEXTS)
        assert int(stats["inference_stats"]["success"]["count"]) >= 3


def _triton_calls(address: str) -> dict[str, Any]:
    """The blocking tritonclient against a gateway (run in a thread: the nodes share our loop)."""
    import queue

    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(address)
    try:
        seen: dict[str, Any] = {
            "config": client.get_model_config("builtin/minilm", as_json=True)["config"],
            "ready": client.is_model_ready("builtin/minilm"),
            "metadata": client.get_model_metadata("builtin/minilm", as_json=True),
        }
        text = tc.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        seen["infer"] = client.infer("builtin/minilm", [text]).as_numpy("embedding")
        results: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put(error or result))
        try:
            client.async_stream_infer("builtin/minilm", [text])
            streamed = results.get(timeout=30)
        finally:
            client.stop_stream()
        assert not isinstance(streamed, Exception), streamed
        seen["stream"] = streamed.as_numpy("embedding")
        seen["statistics"] = client.get_inference_statistics("builtin/minilm", as_json=True)
        return seen
    finally:
        client.close()
