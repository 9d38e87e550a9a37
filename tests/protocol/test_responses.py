"""Signed responses: the provider signs (request id, model digest, inputs, outputs)."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import numpy as np
import pytest

from swarm import AsyncClient
from swarm._errors import IntegrityError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._tensors import tensors_digest
from swarm.client._convert import build_request
from swarm.node._runtime import Model
from swarm.protocol import Identity, ResponseSignature, verify, verify_response
from swarm.protocol._responses import inputs_digest
from tests.client.test_swarm_client import connected_client
from tests.conftest import NodeFactory


def test_tensor_digest_is_canonical() -> None:
    a = ("a", "FP32", (1, 2), b"\x00" * 8)
    b = ("b", "INT8", (3,), b"\x01\x02\x03")
    assert tensors_digest([a, b]) == tensors_digest([b, a])  # order of name, not of list
    # Framing: moving bytes between fields, or a dim between shape and data, changes it.
    assert tensors_digest([("ab", "FP32", (1,), b"")]) != tensors_digest([("a", "bFP32", (1,), b"")])
    assert tensors_digest([("a", "FP32", (1, 2), b"x")]) != tensors_digest([("a", "FP32", (1,), b"x")])
    assert tensors_digest([("a", "FP32", (2,), b"12345678")]) != \
        tensors_digest([("a", "FP64", (2,), b"12345678")])


def test_typed_and_raw_contents_digest_alike() -> None:
    raw = build_request("m", {"x": np.arange(4, dtype=np.float32).reshape(1, 4)})
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([0, 1, 2, 3])
    assert inputs_digest(raw) == inputs_digest(typed)


async def test_node_signs_responses_and_a_flipped_byte_is_detected(
        start_node: NodeFactory, mlp: Model) -> None:
    async with start_node([mlp]) as node:
        # The SDK, pinned to the node's TLS port, verifies every answer.
        async with AsyncClient(node.tls_address, expect_peer=node.peer_id, verify=True) as client:
            await client.infer("builtin/mlp", np.ones((1, 512), np.float32))
            signed = client.last_signature
        assert signed is not None
        assert str(signed.signer) == node.peer_id
        assert signed.model_digest == str(mlp.digest)
        assert signed.valid()

        request = build_request("builtin/mlp", {"input": np.ones((2, 512), np.float32)})
        request.id = "req-1"
        async with grpc.aio.insecure_channel(node.grpc_address) as channel:
            response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        verify_response(request, response, signer=signed.signer)

        def flipped(data: bytes, at: int) -> bytes:
            return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]

        out = pb.ModelInferResponse()
        out.CopyFrom(response)
        out.raw_output_contents[0] = flipped(out.raw_output_contents[0], 5)
        with pytest.raises(IntegrityError, match="does not verify"):
            verify_response(request, out)
        other = pb.ModelInferRequest()
        other.CopyFrom(request)
        other.raw_input_contents[0] = flipped(other.raw_input_contents[0], 0)
        with pytest.raises(IntegrityError, match="does not verify"):
            verify_response(other, response)
        other.CopyFrom(request)
        other.id = "req-2"  # the answer to another request replayed
        with pytest.raises(IntegrityError):
            verify_response(other, response)
        # Someone else's signature over the same facts is not the routed provider's.
        forger = Identity.generate()
        forged = ResponseSignature.sign(forger, signed.request_id, signed.model_digest,
                                        signed.inputs_digest, signed.outputs_digest)
        assert forged.valid()
        out.CopyFrom(response)
        out.parameters["swarm_signer"].string_param = str(forger.peer_id)
        with pytest.raises(IntegrityError, match="not"):
            verify_response(request, out, signer=signed.signer)
        del out.parameters["swarm_signature"]
        with pytest.raises(IntegrityError, match="not signed"):
            verify_response(request, out)


async def test_swarm_client_verifies_routed_responses(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp]]) as (network, nodes):
        client = await connected_client(network, nodes, verify=True)
        try:
            for _ in range(3):
                _, routed = await client.infer_routed("builtin/mlp",
                                                      np.ones((1, 512), np.float32))
                assert routed.signature is not None
                assert routed.signature.signer == routed.peer
        finally:
            await client.close()


def test_identity_signs_the_same_bytes_as_the_private_key() -> None:
    """The fast signer (PyNaCl) must produce exactly cryptography's Ed25519 signatures."""
    for i in range(20):
        identity = Identity.from_seed(hashlib.sha256(b"seed %d" % i).digest())
        for message in (b"", b"x", bytes(range(256)) * (i + 1)):
            assert identity.sign(message) == identity.private_key.sign(message)
            assert verify(identity.public_key, identity.sign(message), message)
