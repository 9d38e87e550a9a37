"""Hostile Open Inference Protocol HTTP requests (/v2): a clear 4xx, never a 500, node stays up.

KServe v2 REST and Triton's binary-tensor extension: a JSON header whose length the
Inference-Header-Content-Length header gives, then the binary tensors it sizes. Every
length, shape, datatype and name in it is the attacker's choice.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
from typing import Any

import aiohttp
import grpc
import numpy as np

from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm.node import Node
from swarm.node._builtins import MLP_DIMS
from swarm.node._runtime import Model
from tests.adversarial.test_cancelled_work import GatedTextModel, _cancelled, _infer_request
from tests.waiting import wait_until

MAX_BODY = 1 << 20
HEADER = "Inference-Header-Content-Length"
ROW = np.zeros((1, MLP_DIMS[0]), dtype=np.float32).tobytes()


def binary(header: dict[str, Any], *chunks: bytes, length: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then `chunks`; the header's length (or `length`)."""
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {HEADER: length if length is not None else str(len(head)),
                                     "Content-Type": "application/octet-stream"}


def mlp_binary(size: int, *, shape: list[int] | None = None, datatype: str = "FP32",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    tensor = {"name": "input", "shape": shape or [1, MLP_DIMS[0]], "datatype": datatype,
              "parameters": {"binary_data_size": size}}
    return {"inputs": [tensor], **(extra or {})}


def mlp_json(data: Any, *, shape: list[int] | None = None, datatype: str = "FP32",
             **extra: Any) -> bytes:
    tensor = {"name": "input", "shape": shape if shape is not None else [1, 3],
              "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def zeros(n: int) -> list[float]:
    return [0.0] * n


D = MLP_DIMS[0]
JSON = {"Content-Type": "application/json"}

# (case, path under /v2/models/, body, headers, the status it must get)
CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    # --- the header length lies
    ("header length past the body", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW)), ROW, length=str(10 * MAX_BODY)), 400),
    ("header length negative", "builtin/mlp/infer", *binary(mlp_binary(len(ROW)), ROW, length="-5"), 400),
    ("header length not a number", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW)), ROW, length="12abc"), 400),
    ("header length of 400 digits", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW)), ROW, length="9" * 400), 400),
    ("header length cuts the JSON", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW)), ROW, length="20"), 400),
    ("header length zero", "builtin/mlp/infer", *binary(mlp_binary(len(ROW)), ROW, length="0"), 400),
    # --- binary sizes do not match the tensors
    ("binary size short of shape x dtype", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW) - 4), ROW[:-4]), 400),
    ("binary size past shape x dtype", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW) + 4), ROW + b"\0" * 4), 400),
    ("binary size past the body", "builtin/mlp/infer", *binary(mlp_binary(len(ROW) * 2), ROW), 400),
    ("binary bytes nobody claims", "builtin/mlp/infer",
     *binary(mlp_binary(len(ROW)), ROW, b"\0" * 64), 400),
    ("binary size negative", "builtin/mlp/infer", *binary(mlp_binary(-4), ROW), 400),
    ("binary size a string", "builtin/mlp/infer", *binary(mlp_binary("2048"), ROW), 400),  # type: ignore[arg-type]
    ("binary size a bool", "builtin/mlp/infer", *binary(mlp_binary(True), ROW), 400),  # type: ignore[arg-type]
    ("binary size a float", "builtin/mlp/infer", *binary(mlp_binary(2048.0), ROW), 400),  # type: ignore[arg-type]
    ("binary size with data too", "builtin/mlp/infer", *binary(
        {"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32", "data": zeros(D),
                     "parameters": {"binary_data_size": len(ROW)}}]}, ROW), 400),
    ("BYTES element longer than its tensor", "builtin/minilm/infer", *binary(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                     "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 1000) + b"abcd"), 400),
    ("BYTES tensor holding more elements than its shape", "builtin/minilm/infer", *binary(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                     "parameters": {"binary_data_size": 10}}]},
        struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"), 400),
    # --- shapes, datatypes, names
    ("shape does not match the model", "builtin/mlp/infer", mlp_json(zeros(3)), JSON, 400),
    ("datatype does not match the model", "builtin/mlp/infer",
     mlp_json([0] * D, shape=[1, D], datatype="INT32"), JSON, 400),
    ("unknown datatype", "builtin/mlp/infer", mlp_json(zeros(D), shape=[1, D], datatype="FP128"), JSON, 400),
    ("datatype not a string", "builtin/mlp/infer", mlp_json(zeros(D), shape=[1, D], datatype=7), JSON, 400),  # type: ignore[arg-type]
    ("data count not shape's", "builtin/mlp/infer", mlp_json(zeros(3), shape=[1, D]), JSON, 400),
    ("strings for FP32", "builtin/mlp/infer", mlp_json(["1.5"] * D, shape=[1, D]), JSON, 400),
    ("nulls for FP32", "builtin/mlp/infer", mlp_json([None] * D, shape=[1, D]), JSON, 400),
    ("objects for FP32", "builtin/mlp/infer", mlp_json([{"a": 1}] * D, shape=[1, D]), JSON, 400),
    ("ragged data", "builtin/mlp/infer", mlp_json([[0.0], [0.0, 1.0]], shape=[1, D]), JSON, 400),
    ("integer too large for any dtype", "builtin/mlp/infer",
     mlp_json([10 ** 400, *zeros(D - 1)], shape=[1, D]), JSON, 400),
    ("numbers for BYTES", "builtin/minilm/infer", json.dumps(
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [1, "x"]}]}).encode(),
     JSON, 400),
    ("lists for BYTES", "builtin/minilm/infer", json.dumps(
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [["x"], ["y", "z"]]}]}
    ).encode(), JSON, 400),
    ("lone surrogate in BYTES", "builtin/minilm/infer",
     b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a\\ud800"]}]}', JSON, 400),
    ("lone surrogate in an input name", "builtin/minilm/infer",
     b'{"inputs": [{"name": "\\udfff", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', JSON, 400),
    ("lone surrogate in the id", "builtin/mlp/infer", mlp_json(zeros(D), shape=[1, D])[:-1]
     + b', "id": "\\ud800"}', JSON, 400),
    ("id not a string", "builtin/mlp/infer", mlp_json(zeros(D), shape=[1, D], id=5), JSON, 400),
    ("unknown output name", "builtin/mlp/infer",
     mlp_json(zeros(D), shape=[1, D], outputs=[{"name": "nope"}]), JSON, 400),
    ("output without a name", "builtin/mlp/infer",
     mlp_json(zeros(D), shape=[1, D], outputs=[{"parameters": {}}]), JSON, 400),
    ("unknown input name", "builtin/mlp/infer",
     json.dumps({"inputs": [{"name": "x", "shape": [1, D], "datatype": "FP32", "data": zeros(D)}]}).encode(),
     JSON, 400),
    ("input without data", "builtin/mlp/infer",
     json.dumps({"inputs": [{"name": "input", "shape": [1, D], "datatype": "FP32"}]}).encode(), JSON, 400),
    ("shared memory input", "builtin/mlp/infer", json.dumps({"inputs": [{
        "name": "input", "shape": [1, D], "datatype": "FP32",
        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 2048}}]}).encode(), JSON, 400),
    ("shape of 2**62 x 2**62", "builtin/mlp/infer", mlp_json([], shape=[2**62, 2**62]), JSON, 400),
    ("negative dimension", "builtin/mlp/infer", mlp_json([], shape=[-1, D]), JSON, 400),
    ("shape not a list", "builtin/mlp/infer", mlp_json(zeros(D), shape="1,512"), JSON, 400),  # type: ignore[arg-type]
    ("shape of bools", "builtin/mlp/infer", mlp_json(zeros(D), shape=[True, D]), JSON, 400),
    ("shape of rank 10,000", "builtin/mlp/infer", mlp_json([0.0], shape=[1] * 10_000), JSON, 400),
    ("batch over the model's max", "builtin/mlp/infer",
     mlp_json(zeros(257 * D), shape=[257, D]), JSON, 400),
    # --- the body itself
    ("not JSON", "builtin/mlp/infer", b"{'inputs': 1}", JSON, 400),
    ("JSON not an object", "builtin/mlp/infer", b"[1, 2]", JSON, 400),
    ("no inputs", "builtin/mlp/infer", b"{}", JSON, 400),
    ("inputs not a list", "builtin/mlp/infer", b'{"inputs": {"name": "input"}}', JSON, 400),
    ("input not an object", "builtin/mlp/infer", b'{"inputs": [7]}', JSON, 400),
    ("10,000 inputs", "builtin/mlp/infer", json.dumps(
        {"inputs": [{"name": f"i{i}", "shape": [1], "datatype": "FP32", "data": [0]}
                    for i in range(10_000)]}).encode(), JSON, 400),
    ("100,000 nested [", "builtin/mlp/infer", b"[" * 100_000, JSON, 400),
    ("data nested 100 deep", "builtin/mlp/infer", mlp_json(json.loads("[" * 100 + "]" * 100)), JSON, 400),
    ("not UTF-8", "builtin/mlp/infer", b'{"id": "\xff\xfe", "inputs": []}', JSON, 400),
    ("parameters not an object", "builtin/mlp/infer",
     mlp_json(zeros(D), shape=[1, D], parameters=[1]), JSON, 400),
    ("timeout parameter negative", "builtin/mlp/infer",
     mlp_json(zeros(D), shape=[1, D], parameters={"timeout": -1}), JSON, 400),
    ("classification requested", "builtin/mlp/infer", mlp_json(
        zeros(D), shape=[1, D], outputs=[{"name": "output", "parameters": {"classification": 3}}]),
     JSON, 400),
    ("too large", "builtin/mlp/infer", b'{"inputs": "' + b"x" * MAX_BODY + b'"}', JSON, 413),
    ("too large once gunzipped (4 KiB -> 4 MiB)", "builtin/mlp/infer",
     gzip.compress(b'{"inputs": "' + b"x" * (4 * MAX_BODY) + b'"}'),
     {**JSON, "Content-Encoding": "gzip"}, 413),
    # --- names
    ("unknown model", "acme/nothing/infer", mlp_json(zeros(D), shape=[1, D]), JSON, 404),
    ("unknown version", "builtin/mlp/versions/sha256:" + "0" * 64 + "/infer",
     mlp_json(zeros(D), shape=[1, D]), JSON, 404),
    # (status 0: any 4xx; a name no model can have is refused as not found or as malformed)
    ("malformed name", "no-namespace/infer", mlp_json(zeros(D), shape=[1, D]), JSON, 0),
    ("NUL in the name", "acme%2F%00/infer", mlp_json(zeros(D), shape=[1, D]), JSON, 0),
    ("surrogate in the name", "%ED%A0%80/infer", mlp_json(zeros(D), shape=[1, D]), JSON, 0),
    ("invalid UTF-8 in the name", "acme/%ff%fe/infer", mlp_json(zeros(D), shape=[1, D]), JSON, 0),
]

GETS = ["acme/nothing", "%ED%A0%80", "acme%2F%00/config", "builtin/mlp/versions/%ff%fe",
        "builtin/mlp/versions/" + "9" * 5000 + "/config", "acme/nothing/stats"]


async def test_hostile_v2_requests_get_a_clear_4xx(start_node: Any, mlp: Model, minilm: Model) -> None:
    async with start_node([mlp, minilm], http_port=0, http_max_body_bytes=MAX_BODY) as node, \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{node.http_port}/v2/models/"
        for case, path, body, headers, status in CASES:
            async with http.post(base + path, data=io.BytesIO(body), headers=headers) as response:
                text = await response.text()
                if status:
                    assert response.status == status, (case, text)
                else:
                    assert 400 <= response.status < 500, (case, text)
                error = json.loads(text)["error"]
                assert isinstance(error, str), case
                assert error, case
                assert "Traceback" not in error, case
                assert len(error) < 2000, case
        for path in GETS:
            async with http.get(base + path) as response:
                assert 400 <= response.status < 500, (path, response.status)
                assert (await response.json())["error"], path
        async with http.get(base + "acme/nothing/ready") as response:
            assert response.status == 400
        async with http.post(base + "builtin/mlp/infer", data=mlp_json(zeros(D), shape=[1, D]),
                             headers=JSON) as response:
            assert response.status == 200, await response.text()  # the node serves on
            assert len((await response.json())["outputs"][0]["data"]) == MLP_DIMS[-1]
        text = _metrics(node)
        for reason in ("body_size", "json_depth", "encoding"):
            assert f'swarm_http_rejected_total{{reason="{reason}"}}' in text, reason
        assert 'status="INTERNAL"' not in text


def _metrics(node: Node) -> str:
    return node.metrics.render().decode()


async def test_a_client_that_hangs_up_stops_its_v2_work(start_node: Any) -> None:
    """A /v2 infer queued behind a busy model, whose client hangs up, never executes."""
    model = GatedTextModel()
    async with start_node([model], http_port=0) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel, \
            aiohttp.ClientSession() as http:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        busy = asyncio.ensure_future(stub.ModelInfer(_infer_request(model.name, b"busy"), timeout=30))
        await wait_until(asyncio.to_thread(model.running.wait, 10), what="the busy batch to run")
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["given up"]}]}
        client = asyncio.create_task(
            http.post(f"http://127.0.0.1:{node.http_port}/v2/models/{model.name}/infer", json=body))
        served = node.table.resolve(model.name)
        await wait_until(lambda: served.batcher.queue_depth == 1, what="the /v2 call to queue")
        client.cancel()  # closes the connection
        await wait_until(lambda: _cancelled(node, model.name) >= 1, what="the node to see the hang-up")
        model.gate.set()
        await busy
        await stub.ModelInfer(_infer_request(model.name, b"after"), timeout=30)
        assert model.batches == [1, 1]  # the busy one, then the next caller's: never "given up"
