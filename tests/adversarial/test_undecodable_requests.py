"""Issue 11's general rule: bytes that are no protobuf message get INVALID_ARGUMENT, not UNKNOWN."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm.node._runtime import Model

SERVICE = "/inference.GRPCInferenceService/"
# model_name (field 1) holding bytes that are not UTF-8; then a length that runs past the end.
UNDECODABLE = {"invalid UTF-8": b"\x0a\x03\xff\xfe\xfd", "truncated": b"\x0a\xff\xff\xff\xff\x0f"}


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(SERVICE + method, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


async def test_undecodable_requests_are_invalid_argument(start_node: Any, mlp: Model) -> None:
    async with start_node([mlp]) as node, grpc.aio.insecure_channel(node.grpc_address) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady",
                       "ModelStatistics"):
            for case, data in UNDECODABLE.items():
                try:
                    await _raw(channel, method)(data, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, case, code)
        # In a stream, an undecodable request gets an error response; the stream goes on.
        stream = channel.stream_stream(SERVICE + "ModelStreamInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=pb.ModelStreamInferResponse.FromString)
        good = pb.ModelInferRequest(model_name=mlp.name, id="good")
        good.inputs.add(name="input", datatype="FP32", shape=[1, 512])
        good.raw_input_contents.append(np.zeros(512, np.float32).tobytes())
        call = stream(iter([UNDECODABLE["truncated"], good.SerializeToString()]), timeout=30)
        answers = [answer async for answer in call]
        assert await call.code() is grpc.StatusCode.OK
        assert sorted(bool(a.error_message) for a in answers) == [False, True]
        (error,) = [a.error_message for a in answers if a.error_message]
        assert error.startswith("INVALID_ARGUMENT")
