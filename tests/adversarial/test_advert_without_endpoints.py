"""Issue 11 item 4: adverts without endpoints are skipped, never an IndexError (UNKNOWN)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest
from swarm.node._runtime import Model
from swarm.protocol import Identity, ModelOffer
from tests.adversarial.support import advertise
from tests.waiting import wait_until

GHOST = "acme/ghost"  # advertised only without endpoints


def _first_seed_before(peer: str) -> int:
    """A seed whose identity sorts before `peer`: its entry comes first among providers."""
    return next(s for s in range(1, 256) if Identity.from_seed(bytes([s]) * 32).peer_id.value < peer)


async def test_advert_without_endpoints_is_skipped(memory_swarm: Any, mlp: Model,
                                                   minilm: Model) -> None:
    async with memory_swarm([[mlp], [minilm]]) as (network, (gateway, provider)):
        await wait_until(lambda: gateway.router is not None
                         and gateway.router.view.providers(minilm.digest),
                         what="the gateway to see the MiniLM provider")
        # A stranger advertises the legitimate MiniLM digest, and a model of its own, with
        # no endpoint; its entry sorts first.
        await advertise(network, _first_seed_before(provider.peer_id), endpoints=[],
                        models=[ModelOffer(minilm.digest, minilm.name),
                                ModelOffer(Digest.of(b"ghost"), GHOST)], seen_by=gateway)
        async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=minilm.name), timeout=30)
            assert meta.outputs[0].name == "embedding"
            config = await stub.ModelConfig(pb.ModelConfigRequest(name=minilm.name), timeout=30)
            assert config.config.max_batch_size == minilm.spec.max_batch_size
            request = pb.ModelInferRequest(model_name=minilm.name)
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(b"\x02\x00\x00\x00hi")
            response = await stub.ModelInfer(request, timeout=30)
            assert response.model_version == str(minilm.digest)
            assert (await stub.ModelReady(pb.ModelReadyRequest(name=minilm.name))).ready

            # Nobody can be reached for the stranger's model: a precise status, never UNKNOWN.
            assert not (await stub.ModelReady(pb.ModelReadyRequest(name=GHOST))).ready
            ghost = pb.ModelInferRequest(model_name=GHOST)
            ghost.inputs.add(name="x", datatype="FP32", shape=[1])
            ghost.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
            for call in (stub.ModelMetadata(pb.ModelMetadataRequest(name=GHOST), timeout=30),
                         stub.ModelConfig(pb.ModelConfigRequest(name=GHOST), timeout=30),
                         stub.ModelInfer(ghost, timeout=30)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() in (grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.UNAVAILABLE), info.value
