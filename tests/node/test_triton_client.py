"""NVIDIA's tritonclient (sync and asyncio) drives a Swarm node unchanged."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from sentence_transformers import SentenceTransformer

from swarm.node._builtins import MLP_DIMS, minilm_dir
from swarm.node._runtime import Model
from tests.conftest import NodeFactory

TEXTS = ["hello world", "Swarm routes requests by latency, load and price.", "ünïcödé ✓"]


@pytest.fixture(scope="module")
def reference_embeddings() -> np.ndarray:
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return np.asarray(model.encode(TEXTS, convert_to_numpy=True))


def text_input(texts: list[str]) -> tc.InferInput:
    tensor = tc.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def mlp_input(x: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


async def test_sync_client_metadata_config_and_infer(
    start_node: NodeFactory, minilm: Model, mlp: Model, reference_embeddings: np.ndarray,
) -> None:
    async with start_node([minilm, mlp]) as node:
        def drive() -> dict[str, Any]:
            client = tc.InferenceServerClient(node.grpc_address)
            try:
                out: dict[str, Any] = {
                    "live": client.is_server_live(),
                    "ready": client.is_server_ready(),
                    "model_ready": client.is_model_ready("builtin/minilm"),
                    "server": client.get_server_metadata(as_json=True),
                    "meta": client.get_model_metadata("builtin/minilm", as_json=True),
                    "mlp_meta": client.get_model_metadata("builtin/mlp", as_json=True),
                    "config": client.get_model_config("builtin/mlp", as_json=True),
                    "index": client.get_model_repository_index(as_json=True),
                }
                result = client.infer("builtin/minilm", [text_input(TEXTS)])
                out["embedding"] = result.as_numpy("embedding")
                x = np.random.default_rng(1).standard_normal((4, MLP_DIMS[0])).astype(np.float32)
                out["x"] = x
                out["mlp"] = client.infer("builtin/mlp", [mlp_input(x)]).as_numpy("output")
                out["stats"] = client.get_inference_statistics("builtin/mlp", as_json=True)
                return out
            finally:
                client.close()

        out = await asyncio.to_thread(drive)
    assert out["live"]
    assert out["ready"]
    assert out["model_ready"]
    assert out["server"]["name"] == "swarm-node"
    assert out["meta"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert out["meta"]["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}]
    assert out["meta"]["versions"] == [str(minilm.digest)]
    assert out["mlp_meta"]["inputs"][0]["shape"] == ["-1", "512"]
    config = out["config"]["config"]
    assert config["max_batch_size"] == mlp.spec.max_batch_size
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == ["512"]
    names = sorted(m["name"] for m in out["index"]["models"])
    assert names == ["builtin/minilm", "builtin/mlp"]
    assert all(m["state"] == "READY" for m in out["index"]["models"])
    np.testing.assert_allclose(out["embedding"], reference_embeddings, atol=1e-4)
    expected = mlp.execute({"input": out["x"]})["output"]
    np.testing.assert_allclose(out["mlp"], expected, rtol=1e-5, atol=1e-5)
    stats = out["stats"]["model_stats"][0]
    assert stats["inference_count"] == "4"
    assert int(stats["inference_stats"]["success"]["count"]) == 1


async def test_sync_client_stream_infer(start_node: NodeFactory, minilm: Model, mlp: Model,
                                        reference_embeddings: np.ndarray) -> None:
    async with start_node([minilm, mlp]) as node:
        def drive() -> list[Any]:
            results: queue.Queue[Any] = queue.Queue()
            client = tc.InferenceServerClient(node.grpc_address)
            client.start_stream(callback=lambda result, error: results.put((result, error)))
            try:
                for i, text in enumerate(TEXTS):
                    client.async_stream_infer("builtin/minilm", [text_input([text])],
                                              request_id=str(i))
                client.async_stream_infer("no/such-model", [text_input(["x"])], request_id="bad")
                return [results.get(timeout=30) for _ in range(len(TEXTS) + 1)]
            finally:
                client.stop_stream()
                client.close()

        responses = await asyncio.to_thread(drive)
    ok = {r.get_response().id: r.as_numpy("embedding") for r, e in responses if e is None}
    errors = [e for _, e in responses if e is not None]
    assert sorted(ok) == ["0", "1", "2"]
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(ok[str(i)][0], reference_embeddings[i], atol=1e-4)
    assert len(errors) == 1
    assert "NOT_FOUND" in str(errors[0])


async def test_aio_client_infer_and_stream(start_node: NodeFactory, mlp: Model) -> None:
    x = np.random.default_rng(2).standard_normal((3, MLP_DIMS[0])).astype(np.float32)
    expected = mlp.execute({"input": x})["output"]
    async with start_node([mlp]) as node:
        client = tca.InferenceServerClient(node.grpc_address)
        try:
            assert await client.is_server_ready()
            meta = await client.get_model_metadata("builtin/mlp", as_json=True)
            assert meta["outputs"][0]["name"] == "output"
            result = await client.infer("builtin/mlp", [mlp_input(x)])
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-5)

            async def requests() -> Any:
                for i in range(3):
                    yield {"model_name": "builtin/mlp", "inputs": [mlp_input(x[i : i + 1])],
                           "request_id": str(i)}

            got = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                got[result.get_response().id] = result.as_numpy("output")
            assert sorted(got) == ["0", "1", "2"]
            for i in range(3):
                np.testing.assert_allclose(got[str(i)][0], expected[i], rtol=1e-5, atol=1e-5)
        finally:
            await client.close()
