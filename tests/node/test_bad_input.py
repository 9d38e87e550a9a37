"""Every bad request gets a precise gRPC status, and the node serves correctly afterwards.

Requests are raw protobuf through the generated stub, so the tests control every byte.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from swarm._errors import InvalidInputError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import decode_raw
from swarm.node import Node
from swarm.node._config import ModelOptions
from swarm.node._runtime import Model
from tests.conftest import NodeFactory
from tests.node.fakes import GatedModel
from tests.waiting import wait_until

MLP = "builtin/mlp"
MINILM = "builtin/minilm"
DIM = 512
Code = grpc.StatusCode


# --------------------------------------------------------------------------- helpers


def f32(rows: int, cols: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def raw_request(model: str, tensors: list[tuple[str, str, list[int], bytes]],
                **fields: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)  # type: ignore[arg-type]
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def mlp_request(x: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    return raw_request(MLP, [("input", "FP32", list(x.shape), x.tobytes())], **fields)


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def text_request(raw: bytes, count: int) -> pb.ModelInferRequest:
    return raw_request(MINILM, [("text", "BYTES", [count], raw)])


async def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call()  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


async def infer_status(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest,
                       timeout: float = 20.0) -> tuple[grpc.StatusCode, str]:
    return await status_of(lambda: stub.ModelInfer(request, timeout=timeout))


async def assert_mlp_serves(stub: pb_grpc.GRPCInferenceServiceStub, mlp: Model) -> None:
    x = f32(2, seed=99)
    response = await stub.ModelInfer(mlp_request(x), timeout=20)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, DIM)
    np.testing.assert_allclose(got, mlp.execute({"input": x})["output"], rtol=1e-5, atol=1e-5)


async def assert_minilm_serves(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = await stub.ModelInfer(text_request(length_prefixed([b"hello world"]), 1), timeout=20)
    got = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert got.shape == (384,)
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4


@pytest.fixture
async def mlp_node(start_node: NodeFactory, mlp: Model) -> AsyncIterator[Node]:
    async with start_node([mlp]) as node:
        yield node


@pytest.fixture
async def stub(mlp_node: Node) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(mlp_node.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# --------------------------------------------------------------------------- model and version


async def test_unknown_model_is_not_found(stub: pb_grpc.GRPCInferenceServiceStub, mlp: Model) -> None:
    code, details = await infer_status(stub, raw_request("no/such-model", [
        ("input", "FP32", [1, DIM], f32(1).tobytes())]))
    assert code is Code.NOT_FOUND
    assert "no/such-model" in details
    for call in (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="no/such-model")),
                 lambda: stub.ModelConfig(pb.ModelConfigRequest(name="no/such-model")),
                 lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="no/such-model"))):
        assert (await status_of(call))[0] is Code.NOT_FOUND
    ready = await stub.ModelReady(pb.ModelReadyRequest(name="no/such-model"))
    assert not ready.ready
    await assert_mlp_serves(stub, mlp)


@pytest.mark.parametrize("version", [
    "sha256:" + "0" * 64,
    "0" * 64,
    "deadbeef",
    "not-a-version",
])
async def test_unknown_version_is_not_found(stub: pb_grpc.GRPCInferenceServiceStub, mlp: Model,
                                            version: str) -> None:
    code, _ = await infer_status(stub, mlp_request(f32(1), model_version=version))
    assert code is Code.NOT_FOUND
    meta_code, _ = await status_of(
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=MLP, version=version)))
    assert meta_code is Code.NOT_FOUND
    await assert_mlp_serves(stub, mlp)


@pytest.mark.parametrize("form", ["full", "bare-hex", "prefix"])
async def test_known_version_by_digest_or_unique_prefix(
        stub: pb_grpc.GRPCInferenceServiceStub, mlp: Model, form: str) -> None:
    version = {"full": str(mlp.digest), "bare-hex": mlp.digest.hex,
               "prefix": mlp.digest.hex[:12]}[form]
    x = f32(3, seed=5)
    response = await stub.ModelInfer(mlp_request(x, model_version=version), timeout=20)
    assert response.model_version == str(mlp.digest)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, DIM)
    np.testing.assert_allclose(got, mlp.execute({"input": x})["output"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- malformed requests


def _typed(shape: list[int], values: list[float]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MLP)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return request


def _both_raw_and_typed() -> pb.ModelInferRequest:
    request = _typed([1, DIM], [0.0] * DIM)
    request.raw_input_contents.append(f32(1).tobytes())
    return request


def _two_raw_for_one_input() -> pb.ModelInferRequest:
    request = mlp_request(f32(1))
    request.raw_input_contents.append(f32(1).tobytes())
    return request


def _duplicate_input() -> pb.ModelInferRequest:
    x = f32(1).tobytes()
    return raw_request(MLP, [("input", "FP32", [1, DIM], x), ("input", "FP32", [1, DIM], x)])


def _unknown_output() -> pb.ModelInferRequest:
    request = mlp_request(f32(1))
    request.outputs.add(name="logits")
    return request


def _negative_timeout() -> pb.ModelInferRequest:
    request = mlp_request(f32(1))
    request.parameters["timeout"].int64_param = -1
    return request


MALFORMED: dict[str, Callable[[], pb.ModelInferRequest]] = {
    "empty request": lambda: pb.ModelInferRequest(model_name=MLP),
    "wrong datatype FP64": lambda: raw_request(MLP, [
        ("input", "FP64", [1, DIM], np.zeros((1, DIM), np.float64).tobytes())]),
    "unknown datatype": lambda: raw_request(MLP, [("input", "FP8", [1, DIM], b"\0" * DIM)]),
    "rank 1": lambda: raw_request(MLP, [("input", "FP32", [DIM], f32(1).tobytes())]),
    "rank 3": lambda: raw_request(MLP, [("input", "FP32", [1, 1, DIM], f32(1).tobytes())]),
    "wrong inner dim": lambda: raw_request(MLP, [("input", "FP32", [1, 511], f32(1, 511).tobytes())]),
    "zero batch": lambda: raw_request(MLP, [("input", "FP32", [0, DIM], b"")]),
    "negative dim": lambda: raw_request(MLP, [("input", "FP32", [-1, DIM], f32(1).tobytes())]),
    "absurd shape": lambda: raw_request(MLP, [("input", "FP32", [1 << 40, DIM], b"")]),
    "raw bytes short": lambda: raw_request(MLP, [("input", "FP32", [1, DIM], f32(1).tobytes()[:-1])]),
    "raw bytes long": lambda: raw_request(MLP, [("input", "FP32", [1, DIM], f32(1).tobytes() + b"\0")]),
    "raw count != inputs": _two_raw_for_one_input,
    "raw and typed contents": _both_raw_and_typed,
    "typed count short": lambda: _typed([1, DIM], [0.0] * (DIM - 1)),
    "typed count long": lambda: _typed([1, DIM], [0.0] * (DIM + 1)),
    "typed wrong field": lambda: _int_contents_for_fp32(),
    "unknown input": lambda: raw_request(MLP, [("x", "FP32", [1, DIM], f32(1).tobytes())]),
    "duplicate input": _duplicate_input,
    "unknown output": _unknown_output,
    "negative timeout": _negative_timeout,
}


def _int_contents_for_fp32() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MLP)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, DIM])
    tensor.contents.int_contents.extend([0] * DIM)
    return request


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_request_is_invalid_argument(
        stub: pb_grpc.GRPCInferenceServiceStub, mlp_node: Node, mlp: Model, case: str) -> None:
    code, details = await infer_status(stub, MALFORMED[case]())
    assert code is Code.INVALID_ARGUMENT, (case, code, details)
    assert details
    await assert_mlp_serves(stub, mlp)
    # The failure is counted under its precise status.
    text = mlp_node.metrics.render().decode()
    assert f'swarm_requests_total{{model="{MLP}",status="INVALID_ARGUMENT"}} 1.0' in text


async def test_typed_contents_are_accepted(stub: pb_grpc.GRPCInferenceServiceStub, mlp: Model) -> None:
    x = f32(1, seed=3)
    response = await stub.ModelInfer(_typed([1, DIM], x.reshape(-1).tolist()), timeout=20)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, DIM)
    np.testing.assert_allclose(got, mlp.execute({"input": x})["output"], rtol=1e-5, atol=1e-5)


async def test_missing_input_is_invalid_argument(start_node: NodeFactory) -> None:
    model = GatedModel()
    async with start_node([model]) as node, grpc.aio.insecure_channel(node.grpc_address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        a = np.ones((1, 2), np.float32)
        code, details = await infer_status(stub, raw_request(
            model.name, [("a", "FP32", [1, 2], a.tobytes())]))
        assert code is Code.INVALID_ARGUMENT
        assert "b" in details
        # Inputs that disagree on the batch dimension.
        code, _ = await infer_status(stub, raw_request(model.name, [
            ("a", "FP32", [1, 2], a.tobytes()),
            ("b", "FP32", [2, 2], np.ones((2, 2), np.float32).tobytes())]))
        assert code is Code.INVALID_ARGUMENT
        response = await stub.ModelInfer(raw_request(model.name, [
            ("a", "FP32", [1, 2], a.tobytes()), ("b", "FP32", [1, 2], (a * 2).tobytes())]))
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[0], np.float32), [3, 3])
    assert model.batches == [1]  # no bad request reached the model


async def test_batch_larger_than_max_batch_size(start_node: NodeFactory, mlp: Model) -> None:
    options = {MLP: ModelOptions(max_batch_size=4)}
    async with start_node([mlp], options) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, details = await infer_status(stub, mlp_request(f32(5)))
        assert code is Code.INVALID_ARGUMENT
        assert "4" in details
        response = await stub.ModelInfer(mlp_request(f32(4)), timeout=20)
        assert list(response.outputs[0].shape) == [4, DIM]
        await assert_mlp_serves(stub, mlp)


async def test_message_larger_than_limit_is_resource_exhausted(start_node: NodeFactory,
                                                               mlp: Model) -> None:
    async with start_node([mlp], max_message_bytes=64 * 1024) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, _ = await infer_status(stub, mlp_request(f32(64)))  # 128 KiB of FP32
        assert code is Code.RESOURCE_EXHAUSTED
        await assert_mlp_serves(stub, mlp)


# --------------------------------------------------------------------------- BYTES (minilm)


BAD_TEXT = {
    "truncated length prefix": (b"\x05\x00", 1),
    "element runs past the end": (b"\x05\x00\x00\x00ab", 1),
    "trailing garbage": (length_prefixed([b"hi"]) + b"xx", 1),
    "fewer elements than shape": (length_prefixed([b"hi"]), 2),
    "invalid UTF-8": (length_prefixed([b"ok", b"\xff\xfe\xfd"]), 2),
}


async def test_malformed_bytes_tensors(start_node: NodeFactory, minilm: Model) -> None:
    async with start_node([minilm]) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for case, (raw, count) in BAD_TEXT.items():
            code, details = await infer_status(stub, text_request(raw, count))
            assert code is Code.INVALID_ARGUMENT, (case, code, details)
            await assert_minilm_serves(stub)
        # Typed BYTES contents with the wrong element count.
        request = pb.ModelInferRequest(model_name=MINILM)
        request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.append(
            b"only one")
        assert (await infer_status(stub, request))[0] is Code.INVALID_ARGUMENT
        await assert_minilm_serves(stub)


# --------------------------------------------------------------------------- deadlines and load


async def test_tiny_deadline_while_busy_is_deadline_exceeded(start_node: NodeFactory) -> None:
    model = GatedModel()
    a = np.ones((1, 2), np.float32)

    def request() -> pb.ModelInferRequest:
        return raw_request(model.name, [("a", "FP32", [1, 2], a.tobytes()),
                                        ("b", "FP32", [1, 2], a.tobytes())])

    async with start_node([model]) as node, grpc.aio.insecure_channel(node.grpc_address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        model.gate.clear()
        try:
            busy = asyncio.create_task(infer_status(stub, request()))
            await asyncio.to_thread(model.running.wait, 10)
            # A gRPC deadline that passes while the model is busy.
            code, _ = await infer_status(stub, request(), timeout=0.05)
            assert code is Code.DEADLINE_EXCEEDED
            batcher = node.table.resolve(model.name).batcher

            def live() -> list[Any]:  # peeks at the queue: live entries, not dead ones
                return [p for p in batcher._queue if not p.future.done()]

            await wait_until(lambda: not live(), what="the node has seen the cancellation")
            # The protocol's own "timeout" parameter (microseconds): the node answers itself.
            short = request()
            short.parameters["timeout"].int64_param = 1000
            server_side = asyncio.create_task(infer_status(stub, short))
            await wait_until(live, what="the request queued")
            deadline = live()[0].deadline  # on the node's clock: the system's
            assert deadline is not None
            await wait_until(lambda: time.monotonic() > deadline,
                             what="the 1 ms budget spent while queued")
        finally:
            model.gate.set()
        assert (await busy)[0] is Code.OK
        assert (await server_side)[0] is Code.DEADLINE_EXCEEDED
        response = await stub.ModelInfer(request(), timeout=20)
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32),
                                      [2, 2])
        text = node.metrics.render().decode()
    # Neither late request reached the model: the busy one and the last one did.
    assert model.batches == [1, 1]
    assert f'swarm_requests_expired_total{{model="{model.name}"}} 1.0' in text
    assert f'swarm_requests_total{{model="{model.name}",status="DEADLINE_EXCEEDED"}}' in text


async def test_full_queue_is_resource_exhausted(start_node: NodeFactory) -> None:
    model = GatedModel()
    options = {model.name: ModelOptions(max_queue_size=1, max_batch_size=1)}
    a = np.ones((1, 2), np.float32)
    request = raw_request(model.name, [("a", "FP32", [1, 2], a.tobytes()),
                                       ("b", "FP32", [1, 2], a.tobytes())])
    flood = 12
    async with start_node([model], options) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        model.gate.clear()
        try:
            calls = [asyncio.create_task(infer_status(stub, request)) for _ in range(flood)]
            # With the model blocked, at most one request runs and one waits in the queue.
            await wait_until(lambda: sum(c.done() for c in calls) >= flood - 2,
                             what="all but two requests answered")
        finally:
            model.gate.set()
        codes = [code for code, _ in await asyncio.gather(*calls)]
        assert codes.count(Code.RESOURCE_EXHAUSTED) >= 1
        assert set(codes) == {Code.OK, Code.RESOURCE_EXHAUSTED}
        assert codes.count(Code.OK) == len(model.batches)
        response = await stub.ModelInfer(request, timeout=20)
        assert list(response.outputs[0].shape) == [1, 2]


async def test_abandoned_request_frees_its_queue_slot(start_node: NodeFactory) -> None:
    model = GatedModel()
    options = {model.name: ModelOptions(max_queue_size=1)}
    a = np.ones((1, 2), np.float32)
    request = raw_request(model.name, [("a", "FP32", [1, 2], a.tobytes()),
                                       ("b", "FP32", [1, 2], a.tobytes())])
    async with start_node([model], options) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        model.gate.clear()
        try:
            busy = asyncio.create_task(infer_status(stub, request))
            await asyncio.to_thread(model.running.wait, 10)
            # This client gives up while queued; its slot must go to the next request.
            assert (await infer_status(stub, request, timeout=0.05))[0] is Code.DEADLINE_EXCEEDED
            batcher = node.table.resolve(model.name).batcher

            def live() -> int:  # peeks at the queue: live entries, not dead ones
                return sum(not p.future.done() for p in batcher._queue)

            await wait_until(lambda: live() == 0, what="the node has seen the cancellation")
            waiting = asyncio.create_task(infer_status(stub, request))
            await wait_until(lambda: waiting.done() or live() == 1,
                             what="the next request queued or refused")
            refused = waiting.done() and waiting.result()[0] is Code.RESOURCE_EXHAUSTED
        finally:
            model.gate.set()
        assert (await busy)[0] is Code.OK
        await waiting
        assert not refused, "a dead request held the only queue slot"


async def test_claimed_element_count_does_not_size_an_allocation(start_node: NodeFactory,
                                                                 minilm: Model) -> None:
    """4 bytes claiming 2**28 BYTES elements: refused at once, without allocating for them."""
    started = time.perf_counter()
    with pytest.raises(InvalidInputError):
        decode_raw("BYTES", [1 << 28], b"\0\0\0\0", name="text")
    assert time.perf_counter() - started < 0.5
    async with start_node([minilm]) as node, \
            grpc.aio.insecure_channel(node.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        started = time.perf_counter()
        code, _ = await infer_status(stub, text_request(b"\0\0\0\0", 1 << 28))
        assert code is Code.INVALID_ARGUMENT
        assert time.perf_counter() - started < 0.5
        await assert_minilm_serves(stub)
