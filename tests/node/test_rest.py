"""The Open Inference Protocol over HTTP: NVIDIA's tritonclient.http and curl-style requests
against a real node on loopback, for models it serves and models a gateway routes."""

from __future__ import annotations

import asyncio
import json
import shlex
import struct
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from tritonclient.utils import InferenceServerException

from swarm.node import Node, NodeState
from swarm.node._builtins import MLP_DIMS
from swarm.node._runtime import Model
from tests.conftest import NodeFactory
from tests.waiting import wait_until

TEXTS = ["hello world", "Swarm routes requests by latency, load and price.", "ünïcödé ✓"]


def texts_array(texts: list[str]) -> np.ndarray:
    return np.array([t.encode() for t in texts], dtype=object)


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples() -> tuple[list[str], str]:
    """README.md's curl command (as argv) and tritonclient.http example (Python source)."""
    text = README.read_text()
    section = text[text.index("speaks the Open Inference Protocol over HTTP"):]
    curl = next(line.strip() for line in section.splitlines() if line.strip().startswith("curl "))
    return shlex.split(curl), section.split("```python\n", 1)[1].split("```", 1)[0]


def run_readme_example(url: str) -> dict[str, Any]:
    """The tritonclient.http example of README.md, run as written there (port filled in)."""
    namespace: dict[str, Any] = {}
    exec(readme_examples()[1].replace("127.0.0.1:N", url), namespace)  # the README, as written
    return namespace


async def test_tritonclient_http_against_a_node(start_node: NodeFactory, mlp: Model,
                                                minilm: Model) -> None:
    x = np.random.default_rng(3).standard_normal((4, MLP_DIMS[0])).astype(np.float32)
    expected = mlp.execute({"input": x})["output"]
    embeddings = minilm.execute({"text": texts_array(TEXTS)})["embedding"]
    async with start_node([mlp, minilm], http_port=0) as node:
        url = f"127.0.0.1:{node.http_port}"

        def drive() -> dict[str, Any]:
            client = th.InferenceServerClient(url)
            out: dict[str, Any] = {
                "live": client.is_server_live(), "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready("builtin/mlp"),
                "version_ready": client.is_model_ready("builtin/mlp", str(mlp.digest)),
                "absent_ready": client.is_model_ready("acme/absent"),
                "server": client.get_server_metadata(),
                "meta": client.get_model_metadata("builtin/minilm"),
                "config": client.get_model_config("builtin/mlp"),
                "index": client.get_model_repository_index(),
                "readme": run_readme_example(url),
            }
            tensor = th.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=False)  # JSON in, JSON out
            result = client.infer("builtin/mlp", [tensor], request_id="r1", outputs=[
                th.InferRequestedOutput("output", binary_data=False)])
            out["json"], out["id"] = result.as_numpy("output"), result.get_response()["id"]
            text = th.InferInput("text", [len(TEXTS)], "BYTES")
            text.set_data_from_numpy(texts_array(TEXTS))  # BYTES, binary
            out["bytes"] = client.infer("builtin/minilm", [text]).as_numpy("embedding")
            text.set_data_from_numpy(texts_array(TEXTS), binary_data=False)  # BYTES as JSON strings
            prefix = str(minilm.digest).removeprefix("sha256:")[:12]  # a version, as over gRPC
            result = client.infer("builtin/minilm", [text], model_version=prefix)
            out["bytes_json"] = result.as_numpy("embedding")
            out["version"] = result.get_response()["model_version"]
            out["stats"] = client.get_inference_statistics("builtin/minilm")
            for name, version in (("builtin/mlp", "sha256:" + "0" * 64), ("acme/absent", "")):
                try:
                    client.infer(name, [tensor], model_version=version)
                except InferenceServerException as exc:
                    out[f"error {name}"] = (exc.status(), exc.message())
            client.close()
            return out

        out = await asyncio.to_thread(drive)
    assert (out["live"], out["ready"], out["model_ready"], out["version_ready"]) == (True,) * 4
    assert out["absent_ready"] is False
    assert out["server"]["name"] == "swarm-node"
    assert "binary_tensor_data" in out["server"]["extensions"]
    assert out["meta"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert out["meta"]["versions"] == [str(minilm.digest)]
    assert out["config"]["max_batch_size"] == 256
    assert out["config"]["input"][0]["dims"] == [MLP_DIMS[0]]
    assert {m["name"] for m in out["index"]} == {"builtin/mlp", "builtin/minilm"}
    readme = out["readme"]
    np.testing.assert_array_equal(readme["y"], mlp.execute({"input": readme["x"]})["output"])
    np.testing.assert_array_equal(out["json"], expected)
    assert out["id"] == "r1"
    np.testing.assert_allclose(out["bytes"], embeddings, atol=1e-5)
    np.testing.assert_allclose(out["bytes_json"], embeddings, atol=1e-5)
    assert out["version"] == str(minilm.digest)
    (stats,) = out["stats"]["model_stats"]
    assert stats["inference_count"] == 2 * len(TEXTS)
    assert stats["inference_stats"]["success"]["count"] == 2
    assert out["error builtin/mlp"][0] == "404"
    assert "no version" in out["error builtin/mlp"][1]
    assert out["error acme/absent"][0] == "404"


async def test_curl_style_requests(start_node: NodeFactory, mlp: Model, minilm: Model) -> None:
    async with start_node([mlp, minilm], http_port=0) as node, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{node.http_port}/v2"
        # The README's curl example: JSON in, JSON out (curl -d says it is a form; no matter).
        curl = readme_examples()[0]
        assert curl[:2] == ["curl", "-s"]
        assert curl[3] == "-d"
        async with http.post("http://" + curl[2].replace("127.0.0.1:N", f"127.0.0.1:{node.http_port}"),
                             data=curl[4], headers={
                                 "Content-Type": "application/x-www-form-urlencoded"}) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            answer = await response.json()
        (output,) = answer["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [1, 384])
        assert len(output["data"]) == 384
        # Percent-encoded names and versions (the digest's ':' too).
        version = str(mlp.digest).replace(":", "%3A")
        for path in ("/models/builtin%2Fmlp", f"/models/builtin%2Fmlp/versions/{version}",
                     "/models/builtin%2fmlp/ready", f"/models/builtin/mlp/versions/{version}/ready"):
            async with http.get(base + path) as response:
                assert response.status == 200, path
        # The binary extension by hand: one FP32 tensor in, the output asked for in binary.
        x = np.arange(2 * MLP_DIMS[0], dtype=np.float32).reshape(2, -1) / 1000
        head = json.dumps({"inputs": [{"name": "input", "shape": [2, MLP_DIMS[0]], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
        async with http.post(f"{base}/models/builtin%2Fmlp/infer", data=head + x.tobytes(), headers={
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream"}) as response:
            assert response.status == 200
            raw = await response.read()
            length = int(response.headers["Inference-Header-Content-Length"])
        answer = json.loads(raw[:length])
        assert answer["outputs"][0]["parameters"]["binary_data_size"] == len(raw) - length
        y = np.frombuffer(raw[length:], dtype="<f4").reshape(answer["outputs"][0]["shape"])
        np.testing.assert_array_equal(y, mlp.execute({"input": x})["output"])
        # A BYTES tensor in binary: 4-byte little-endian length, then the bytes, per element.
        elements = b"".join(struct.pack("<I", len(t)) + t for t in (b"a", "ü".encode()))
        head = json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(elements)}}]}).encode()
        async with http.post(f"{base}/models/builtin/minilm/infer", data=head + elements,
                             headers={"Inference-Header-Content-Length": str(len(head))}) as response:
            assert response.status == 200
            assert (await response.json())["outputs"][0]["shape"] == [2, 384]
        async with http.get(f"{base}/health/live") as response:
            assert (response.status, await response.json()) == (200, {"live": True})
        async with http.get(base) as response:
            assert (await response.json())["name"] == "swarm-node"
        async with http.get(f"{base}/models/builtin/mlp/infer") as response:
            assert response.status == 405
            assert (await response.json())["error"]


async def test_a_draining_node_is_not_ready(start_node: NodeFactory, mlp: Model) -> None:
    async with start_node([mlp], http_port=0) as node, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{node.http_port}/v2"
        node.state = NodeState.DRAINING  # what a stop sets first (then it waits for requests)
        try:
            async with http.get(f"{base}/health/ready") as response:
                assert (response.status, await response.json()) == (400, {"ready": False})
            async with http.get(f"{base}/health/live") as response:
                assert response.status == 200
            async with http.post(f"{base}/models/builtin/mlp/infer", json={"inputs": [
                    {"name": "input", "shape": [1, MLP_DIMS[0]], "datatype": "FP32",
                     "data": [0.0] * MLP_DIMS[0]}]}) as response:
                assert response.status == 503
                assert "draining" in (await response.json())["error"]
        finally:
            node.state = NodeState.SERVING


async def until_seen(gateway: Node, model: str) -> None:
    await wait_until(lambda: gateway.router is not None
                     and gateway.router.view.providers_of_name(model),
                     timeout=10, what=f"the gateway to see a provider of {model}")


async def test_tritonclient_http_through_a_gateway(memory_swarm: Any, mlp: Model,
                                                   minilm: Model) -> None:
    """Node 0 serves the MLP only; tritonclient.http through it reaches node 1's MiniLM."""
    embeddings = minilm.execute({"text": texts_array(TEXTS)})["embedding"]
    async with memory_swarm([[mlp], [minilm]], options=[{"http_port": 0}, {}]) as (_, nodes):
        gateway = nodes[0]
        await until_seen(gateway, "builtin/minilm")
        client = tha.InferenceServerClient(f"127.0.0.1:{gateway.http_port}")
        try:
            assert await client.is_model_ready("builtin/minilm")
            assert await client.is_model_ready("builtin/minilm", str(minilm.digest))
            meta = await client.get_model_metadata("builtin/minilm")
            assert meta["outputs"][0]["name"] == "embedding"
            config = await client.get_model_config("builtin/minilm")
            assert config["parameters"]["digest"]["string_value"] == str(minilm.digest)
            text = tha.InferInput("text", [len(TEXTS)], "BYTES")
            text.set_data_from_numpy(texts_array(TEXTS))
            result = await client.infer("builtin/minilm", [text], model_version=str(minilm.digest))
            np.testing.assert_allclose(result.as_numpy("embedding"), embeddings, atol=1e-5)
            assert result.get_response()["model_version"] == str(minilm.digest)
            stats = await client.get_inference_statistics("builtin/minilm")
            assert stats["model_stats"][0]["inference_count"] == len(TEXTS)
            with pytest.raises(InferenceServerException) as info:
                await client.get_model_metadata("acme/absent")
            assert info.value.status() == "404"
        finally:
            await client.close()
        assert 'status="FORWARDED"' in gateway.metrics.render().decode()
