"""Issue 12: an advert naming someone else's endpoint cannot answer in their name.

A stranger signs an advert that puts an honest node's TLS endpoint under its own peer
id. Whoever routes to it (a gateway, the SDK) finds a server that proves another peer
id, refuses it, counts it and logs it once per peer.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np
import pytest

from swarm import AsyncClient
from swarm._errors import InferenceError, NoProviderError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest
from swarm.node._runtime import Model
from swarm.protocol import ModelOffer
from tests.adversarial.support import advertise
from tests.adversarial.test_name_hijack import light_peer

CLAIMED = Digest.of(b"claimed by a stranger")


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="acme/thing", model_version=str(CLAIMED))
    request.inputs.add(name="input", datatype="FP32", shape=[1, 512])
    request.raw_input_contents.append(np.zeros(512, np.float32).tobytes())
    return request


async def test_a_stranger_advertising_an_honest_endpoint_is_refused(
        memory_swarm: Any, mlp: Model, caplog: pytest.LogCaptureFixture) -> None:
    async with memory_swarm([[mlp]]) as (network, (honest,)):
        stranger = await advertise(network, 9, endpoints=[honest.tls_address],
                                   models=[ModelOffer(CLAIMED, "acme/thing")], seen_by=honest)
        caplog.set_level(logging.WARNING, logger="swarm.tls")
        # The node as gateway: it forwards to the stranger's advert and refuses the server.
        async with grpc.aio.insecure_channel(honest.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(_request(), timeout=10)
                assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                             grpc.StatusCode.NOT_FOUND)
        assert honest.router is not None
        channels = honest.router.channels
        assert channels is not None
        assert channels.refused >= 1
        text = honest.metrics.render().decode()
        assert f'swarm_tls_peer_refused_total{{client="router"}} {float(channels.refused)}' in text
        refusals = [r for r in caplog.records if str(stranger.peer_id) in r.getMessage()]
        assert len(refusals) == 1  # logged once per peer, however often it is tried
        # The SDK routing by itself refuses it too, and never gets an answer from it.
        async with AsyncClient(peer=light_peer(network), join_timeout=2.0) as client:
            await client.start()
            with pytest.raises((InferenceError, NoProviderError)):
                await client.infer(f"acme/thing@{CLAIMED}", np.zeros((1, 512), np.float32))
            assert client.router.channels is not None
            assert client.router.channels.refused >= 1
