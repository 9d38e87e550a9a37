"""Issue 11 item 1: nobody hijacks a model name by advertising it from many identities.

The attacker runs a node that answers `builtin/minilm` with vectors of its own, at a
digest of its choosing, and three more fresh identities advertise the same claim with
the attacker's endpoint: four claims against one honest provider. Names resolve only
through signed statements (the release pins the built-ins' digests), so the gateway and
the SDK still get MiniLM's vectors, or a clear error when no honest provider is there:
never the attacker's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from swarm import AsyncClient, NoProviderError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest
from swarm.node._runtime import Model
from swarm.protocol import Identity, LightPeer, ModelOffer
from swarm.protocol.testing import MemoryNetwork
from swarm.routing import BUILTIN_DIGESTS
from tests.adversarial.support import advertise
from tests.waiting import wait_until

BOGUS = Digest("0" * 64)
SYBILS = (41, 42, 43)  # seeds of the attacker's extra identities
TEXTS = ["hello world", "the attacker must not answer this"]


class Impostor(Model):
    """Answers as `builtin/minilm` (same inputs and outputs), with vectors of its own."""

    def __init__(self, real: Model) -> None:
        self.name = real.name
        self.digest = BOGUS
        self.spec = real.spec
        self.device = torch.device("cpu")
        self.answered = 0

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.answered += 1
        rows = len(inputs["text"])
        return {"embedding": np.full((rows, self.spec.outputs[0].shape[1]), 0.5, np.float32)}

    def example_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"text": np.array([b"x"] * batch_size, dtype=object)}


def light_peer(network: MemoryNetwork) -> LightPeer:
    async def start(identity: Identity) -> Any:
        return network.join(identity.peer_id)

    return LightPeer(start)


async def hijack(network: MemoryNetwork, attacker: Any, gateway: Any) -> None:
    """Three fresh identities claim builtin/minilm at the attacker's digest and endpoint."""
    for seed in SYBILS:
        await advertise(network, seed, endpoints=[attacker.tls_address],
                        models=[ModelOffer(BOGUS, "builtin/minilm")], seen_by=gateway)


def embed_request(texts: list[str]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="builtin/minilm")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(
        b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts))
    return request


async def test_sybil_adverts_do_not_hijack_a_builtin_name(memory_swarm: Any, mlp: Model,
                                                          minilm: Model) -> None:
    impostor = Impostor(minilm)
    real = minilm.execute({"text": np.array([t.encode() for t in TEXTS], dtype=object)})
    async with memory_swarm([[mlp], [minilm], [impostor]]) as (network, nodes):
        gateway, _, attacker = nodes
        impostor.answered = 0  # its warm-up
        async with AsyncClient(peer=light_peer(network)) as client:
            await client.start()
            await wait_until(lambda: gateway.router is not None
                             and gateway.router.view.providers(minilm.digest)
                             and client.router.view.providers(minilm.digest)
                             and client.router.view.providers(BOGUS),
                             what="the gateway and the client to see both providers")
            await hijack(network, attacker, gateway)
            await wait_until(lambda: len(client.router.view.providers(BOGUS)) == 4,
                             what="the client to see every claim")
            assert len(gateway.router.view.providers(BOGUS)) == 4  # four claims against one

            # The gateway (it serves no MiniLM itself) forwards to the honest provider only.
            async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(8):
                    response = await stub.ModelInfer(embed_request(TEXTS), timeout=30)
                    assert response.model_version == str(minilm.digest)
                    got = np.frombuffer(response.raw_output_contents[0], np.float32)
                    np.testing.assert_allclose(got.reshape(2, -1), real["embedding"], atol=1e-5)
                meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="builtin/minilm"),
                                                timeout=30)
                assert str(minilm.digest) in meta.versions

            # The SDK, joined as a light peer, sees the same claims and routes the same way.
            for _ in range(8):
                vectors = await client.embed(TEXTS)
                np.testing.assert_allclose(vectors, real["embedding"], atol=1e-5)
            assert client.router.resolve("builtin/minilm") == minilm.digest
        assert impostor.answered == 0, "the attacker answered a request"


async def test_without_an_honest_provider_the_answer_is_an_error(memory_swarm: Any,
                                                                 mlp: Model,
                                                                 minilm: Model) -> None:
    impostor = Impostor(minilm)
    async with memory_swarm([[mlp], [impostor]]) as (network, nodes):
        gateway, attacker = nodes
        impostor.answered = 0  # its warm-up
        async with AsyncClient(peer=light_peer(network), join_timeout=0.5) as client:
            await client.start()
            await wait_until(lambda: gateway.router is not None
                             and gateway.router.view.providers(BOGUS)
                             and client.router.view.providers(BOGUS),
                             what="the gateway and the client to see the attacker")
            await hijack(network, attacker, gateway)
            await wait_until(lambda: len(client.router.view.providers(BOGUS)) == 4,
                             what="the client to see every claim")
            async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(embed_request(TEXTS), timeout=30)
                assert info.value.code() is grpc.StatusCode.NOT_FOUND
                assert str(BUILTIN_DIGESTS["builtin/minilm"]) in (info.value.details() or "")
            with pytest.raises(NoProviderError, match="pinned by this release"):
                await client.embed(TEXTS)
        assert impostor.answered == 0, "the attacker answered a request"


async def test_a_bare_name_without_a_signed_tag_is_refused(memory_swarm: Any, mlp: Model,
                                                           minilm: Model) -> None:
    """Advert counts name nothing: an unsigned bare name gets an error saying what to do."""
    impostor = Impostor(minilm)
    impostor.name = "acme/embedder"
    async with memory_swarm([[mlp], [impostor]]) as (network, nodes):
        gateway, attacker = nodes
        for seed in SYBILS:
            await advertise(network, seed, endpoints=[attacker.tls_address],
                            models=[ModelOffer(BOGUS, "acme/embedder")], seen_by=gateway)
        assert gateway.router is not None
        with pytest.raises(NoProviderError) as info:
            gateway.router.resolve("acme/embedder")
        message = str(info.value)
        assert "acme/embedder@sha256:" in message
        assert "signed" in message
        # ... and the claimed version can be pinned on purpose, by digest.
        assert gateway.router.resolve(f"acme/embedder@{BOGUS}") == BOGUS
        # A listing of the swarm shows every advertised version by its digest.
        async with AsyncClient(peer=light_peer(network), join_timeout=2.0) as client:
            await client.start()
            await wait_until(lambda: client.router.view.providers(BOGUS)
                             and client.router.view.providers(mlp.digest),
                             what="the client to see both nodes")
            listed = {(m.name, m.versions[0]) for m in await client.models()}
        assert ("acme/embedder", str(BOGUS)) in listed
        assert ("builtin/mlp", str(mlp.digest)) in listed
