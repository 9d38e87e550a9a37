"""Signed inference responses: the provider's Ed25519 signature over what it computed.

A provider signs (request id, model digest, inputs digest, outputs digest), the
digests being `swarm._tensors.tensors_digest` of the request's inputs and the
response's outputs. The signature and the signer's peer id travel as response
parameters (`swarm_signature`: base64, `swarm_signer`: peer id), which foreign OIP
clients ignore. A verified `ResponseSignature` is evidence (the staking issue): anyone
holding it, the request and the response can check who claimed which outputs.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from swarm._errors import IntegrityError, InvalidReferenceError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import decode_contents, encode_raw, tensors_digest
from swarm._types import PeerId
from swarm.protocol._identity import Identity, public_key_of_peer, verify

__all__ = ["RESPONSE_DOMAIN", "SIGNATURE_PARAM", "SIGNER_PARAM", "ResponseSignature",
           "inputs_digest", "outputs_digest", "response_message", "sign_response",
           "verify_response"]

RESPONSE_DOMAIN = b"swarm/response/v1\0"
SIGNATURE_PARAM = "swarm_signature"
SIGNER_PARAM = "swarm_signer"


def inputs_digest(request: pb.ModelInferRequest) -> bytes:
    """tensors_digest of a request's inputs (raw contents as sent; typed contents in raw
    form). Raises InvalidInputError for contents that do not match their shape."""
    raw = request.raw_input_contents
    tensors = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data: bytes = raw[i] if i < len(raw) else b""
        else:
            array = decode_contents(tensor.datatype, tensor.shape, tensor.contents,
                                    name=tensor.name)
            data = encode_raw(array)[2]
        tensors.append((tensor.name, tensor.datatype, tuple(tensor.shape), data))
    return tensors_digest(tensors)


def outputs_digest(response: pb.ModelInferResponse) -> bytes:
    """tensors_digest of a response's outputs (raw_output_contents)."""
    raw = response.raw_output_contents
    return tensors_digest([(t.name, t.datatype, tuple(t.shape), raw[i] if i < len(raw) else b"")
                           for i, t in enumerate(response.outputs)])


def sign_response(identity: Identity, request: pb.ModelInferRequest,
                  response: pb.ModelInferResponse) -> ResponseSignature:
    """Sign `response` (its model_version is the model digest) and add the parameters."""
    signed = ResponseSignature.sign(identity, request.id, response.model_version,
                                    inputs_digest(request), outputs_digest(response))
    response.parameters[SIGNER_PARAM].string_param = str(signed.signer)
    response.parameters[SIGNATURE_PARAM].string_param = signed.encoded
    return signed


def verify_response(request: pb.ModelInferRequest, response: pb.ModelInferResponse, *,
                    signer: PeerId | None = None) -> ResponseSignature:
    """The response's verified signature over this request, or IntegrityError.

    The digests are recomputed here from `request` and `response`; `signer` (the peer
    the request was routed to) must be the one that signed, when given.
    """
    params = response.parameters
    if SIGNATURE_PARAM not in params or SIGNER_PARAM not in params:
        raise IntegrityError("the response is not signed")
    signed = ResponseSignature.from_params(
        params[SIGNER_PARAM].string_param, params[SIGNATURE_PARAM].string_param,
        request.id, response.model_version, inputs_digest(request), outputs_digest(response))
    if signer is not None and signed.signer != signer:
        raise IntegrityError(f"the response is signed by {signed.signer}, not {signer}")
    if response.id != request.id:
        raise IntegrityError("the response answers another request id")
    if not signed.valid():
        raise IntegrityError(f"the response's signature by {signed.signer} does not verify")
    return signed


def response_message(request_id: str, model_digest: str, inputs_digest: bytes,
                     outputs_digest: bytes) -> bytes:
    """The bytes a provider signs (domain-separated, length-framed)."""
    rid, model = request_id.encode(), model_digest.encode()
    return (RESPONSE_DOMAIN + struct.pack("<I", len(rid)) + rid
            + struct.pack("<I", len(model)) + model + inputs_digest + outputs_digest)


@dataclass(frozen=True, slots=True)
class ResponseSignature:
    """What a provider signed for one response, and its signature."""

    signer: PeerId
    request_id: str
    model_digest: str
    inputs_digest: bytes
    outputs_digest: bytes
    signature: bytes

    @classmethod
    def sign(cls, identity: Identity, request_id: str, model_digest: str,
             inputs_digest: bytes, outputs_digest: bytes) -> ResponseSignature:
        message = response_message(request_id, model_digest, inputs_digest, outputs_digest)
        return cls(identity.peer_id, request_id, model_digest, inputs_digest, outputs_digest,
                   identity.sign(message))

    @classmethod
    def from_params(cls, signer: str, signature: str, request_id: str, model_digest: str,
                    inputs_digest: bytes, outputs_digest: bytes) -> ResponseSignature:
        """From the response parameters and the digests the verifier computed itself."""
        try:
            raw = base64.b64decode(signature, validate=True)
            peer = PeerId(signer)
        except (binascii.Error, ValueError, InvalidReferenceError) as exc:
            raise IntegrityError(f"malformed response signature: {exc}") from exc
        return cls(peer, request_id, model_digest, inputs_digest, outputs_digest, raw)

    @property
    def encoded(self) -> str:
        return base64.b64encode(self.signature).decode()

    def valid(self) -> bool:
        try:
            key = public_key_of_peer(self.signer)
        except InvalidReferenceError:
            return False
        return verify(key, self.signature, response_message(
            self.request_id, self.model_digest, self.inputs_digest, self.outputs_digest))
