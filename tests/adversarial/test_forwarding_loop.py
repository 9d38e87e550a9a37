"""Issue 11 item 3: one advert pointing at a gateway itself must not make it call itself forever."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest
from swarm.node._runtime import Model
from swarm.protocol import ModelOffer
from tests.adversarial.support import advertise, usage_of

LOOP = "acme/loop"


def _infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=LOOP)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    return request


async def test_metadata_forwarding_does_not_loop(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp]]) as (network, (gateway,)):
        # A stranger claims to serve acme/loop at the gateway's own address.
        await advertise(network, 7, endpoints=[gateway.tls_address],
                        models=[ModelOffer(Digest.of(b"loop"), LOOP)], seen_by=gateway)
        async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = {
                "ModelMetadata": lambda: stub.ModelMetadata(
                    pb.ModelMetadataRequest(name=LOOP), timeout=30),
                "ModelConfig": lambda: stub.ModelConfig(pb.ModelConfigRequest(name=LOOP),
                                                        timeout=30),
                "ModelInfer": lambda: stub.ModelInfer(_infer_request(), timeout=30),
            }
            for method, call in calls.items():
                with usage_of() as used:
                    try:
                        await call()
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                print(f"{method} through a looping advert: {code.name}, {used.cpu_s:.2f} s CPU, "
                      f"{used.rss_mb:+.1f} MB RSS, {used.wall_s:.2f} s")
                # The provider it names (the gateway itself) does not serve it: a stale
                # advert, so NOT_FOUND; one hop, so nothing worth measuring.
                assert code is grpc.StatusCode.NOT_FOUND, method
                assert used.cpu_s < 0.5, method
                assert used.rss_mb < 20, method
            # ModelReady is forwarded too: the gateway, asked as a provider, says no.
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=LOOP), timeout=30)
            assert ready.ready is False
