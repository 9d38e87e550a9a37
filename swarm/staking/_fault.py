"""Wrong-result evidence: a provider's signed outputs, outvoted by two other providers' signed
outputs for the same model and inputs.

Anyone can check it with the three public keys alone (`FaultEvidence.check`): the three
signatures verify over (request id, model digest, inputs digest, outputs digest), the
outputs digests are recomputed from the output tensors the evidence carries, the three
signers are distinct, the two witnesses agree with each other within the tolerance and the
offender agrees with neither.

The tolerance travels inside the evidence (the client takes it from the model's manifest),
because a node that judges evidence may not hold the manifest; the genesis bounds it from
below (`SlashingTable.min_rtol_ppb`, `min_atol_ppb`: evidence that uses a tighter tolerance
than the network's floor is refused, so honest float noise is never a fault) and from above
(`max_rtol_ppb`, `max_atol_ppb`).

`after_seq` names where on the offender's own chain the slash is taken: right after its
transaction `after_seq` (0: before its first). A reporter sets it to the offender's last
sequence number it has seen. Every node then burns the same stake whatever else it has
received (see _apply), and the Ledger replays from a checkpoint when evidence arrives late.

Wire form (big-endian; every length bounded):

    fault    := "SWF1" chain[32] after_seq:u64 rtol:f64 atol:f64 response*3
                (offender first, then the two witnesses ordered by signer key)
    response := signer[32] signature[64] n:u16 request_id n:u16 model_digest
                inputs_digest[32] count:u8 tensor*count
    tensor   := n:u16 name n:u8 datatype ndim:u8 dim:i64*ndim n:u32 raw
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swarm._errors import IntegrityError, InvalidInputError
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._tensors import DATATYPES, Tolerance, tensors_agree, tensors_digest
from swarm._types import PeerId
from swarm.protocol import ResponseSignature, verify_response
from swarm.staking._errors import InvalidEvidenceError
from swarm.staking._genesis import SlashingTable
from swarm.staking._tx import key_of, peer_of

__all__ = ["FAULT_MAGIC", "MAX_FAULT_BYTES", "FaultEvidence", "FaultKey", "SignedOutputs",
           "signed_outputs"]

FAULT_MAGIC = b"SWF1"
# Bounds on what one piece of evidence can make every node store and compare.
MAX_FAULT_BYTES = 512 << 10  # = swarm.staking._wire.MAX_WIRE_BYTES: it must travel by gossip
MAX_TENSORS = 16
MAX_NDIM = 8
MAX_TEXT = 512

Tensor = tuple[str, str, tuple[int, ...], bytes]
# (offender, request id, inputs digest): one offence, slashed once.
FaultKey = tuple[PeerId, str, bytes]

_HEAD = struct.Struct(">4s32sQdd")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_PPB = 1e9


@dataclass(frozen=True, slots=True)
class SignedOutputs:
    """One provider's signed response with the output tensors it signed."""

    signature: ResponseSignature
    outputs: tuple[Tensor, ...]

    @property
    def signer(self) -> PeerId:
        return self.signature.signer

    def check(self) -> None:
        """InvalidEvidenceError unless the signature covers exactly these outputs."""
        if tensors_digest(self.outputs) != self.signature.outputs_digest:
            raise InvalidEvidenceError(f"outputs of {self.signer.short} are not the ones "
                                       "it signed")
        if not self.signature.valid():
            raise InvalidEvidenceError(f"response signature of {self.signer.short} does not "
                                       "verify")


def signed_outputs(request: pb.ModelInferRequest,
                   response: pb.ModelInferResponse) -> SignedOutputs:
    """A verified response as evidence material (IntegrityError if it is not validly signed).
    Raw output contents only (what signed responses sign)."""
    signature = verify_response(request, response)
    raw = response.raw_output_contents
    outputs = tuple((t.name, t.datatype, tuple(int(d) for d in t.shape),
                     bytes(raw[i]) if i < len(raw) else b"")
                    for i, t in enumerate(response.outputs))
    return SignedOutputs(signature, outputs)


@dataclass(frozen=True, slots=True)
class FaultEvidence:
    """The offender's signed outputs and two witnesses' that agree with each other and not
    with the offender's. Build with `make`; `check` before trusting it."""

    chain: bytes
    after_seq: int
    tolerance: Tolerance
    offender: SignedOutputs
    witnesses: tuple[SignedOutputs, SignedOutputs]

    @classmethod
    def make(cls, chain: bytes, after_seq: int, tolerance: Tolerance, offender: SignedOutputs,
             witnesses: Sequence[SignedOutputs]) -> FaultEvidence:
        if len(witnesses) != 2:
            raise InvalidEvidenceError("evidence needs exactly two witnesses")
        a, b = sorted(witnesses, key=lambda w: (key_of(w.signer), w.signature.signature))
        return cls(chain, after_seq, tolerance, offender, (a, b))

    @property
    def offender_peer(self) -> PeerId:
        return self.offender.signer

    @property
    def key(self) -> FaultKey:
        s = self.offender.signature
        return s.signer, s.request_id, s.inputs_digest

    @property
    def wire(self) -> bytes:
        parts = [_HEAD.pack(FAULT_MAGIC, self.chain, self.after_seq, self.tolerance.rtol,
                            self.tolerance.atol)]
        for response in (self.offender, *self.witnesses):
            parts.append(_encode_response(response))
        return b"".join(parts)

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.wire).digest()

    @classmethod
    def decode(cls, data: bytes, chain: bytes,
               slashing: SlashingTable | None = None) -> FaultEvidence:
        """Parse (strictly) and `check` (InvalidEvidenceError)."""
        data = bytes(data)
        if len(data) > MAX_FAULT_BYTES:
            raise InvalidEvidenceError(f"evidence of {len(data)} bytes exceeds "
                                       f"{MAX_FAULT_BYTES}")
        reader = _Reader(data)
        magic, evidence_chain, after_seq, rtol, atol = reader.take(_HEAD)
        if magic != FAULT_MAGIC:
            raise InvalidEvidenceError("not wrong-result evidence (bad magic)")
        if evidence_chain != chain:
            raise InvalidEvidenceError("evidence made for another chain (genesis)")
        if after_seq >= 1 << 63:
            raise InvalidEvidenceError("after_seq out of range")
        try:
            tolerance = Tolerance(rtol, atol)
        except InvalidInputError as exc:
            raise InvalidEvidenceError(str(exc)) from exc
        responses = [_decode_response(reader) for _ in range(3)]
        if reader.offset != len(data):
            raise InvalidEvidenceError(f"{len(data) - reader.offset} trailing bytes")
        evidence = cls(chain, after_seq, tolerance, responses[0], (responses[1], responses[2]))
        if evidence.wire != data:
            raise InvalidEvidenceError("evidence is not in canonical form")
        evidence.check(slashing)
        return evidence

    def check(self, slashing: SlashingTable | None = None) -> None:
        """Raise InvalidEvidenceError unless this proves the offender signed outputs that two
        other providers, agreeing with each other, contradict. With `slashing` (the genesis
        table), the tolerance must lie within the network's bounds."""
        a, b = self.witnesses
        signers = {self.offender.signer, a.signer, b.signer}
        if len(signers) != 3:
            raise InvalidEvidenceError("offender and witnesses must be three different keys")
        if key_of(a.signer) > key_of(b.signer):
            raise InvalidEvidenceError("witnesses not ordered by key")
        first = self.offender.signature
        for w in self.witnesses:
            if (w.signature.model_digest, w.signature.inputs_digest) != \
                    (first.model_digest, first.inputs_digest):
                raise InvalidEvidenceError("responses are for different models or inputs")
        if slashing is not None:
            low = Tolerance(slashing.min_rtol_ppb / _PPB, slashing.min_atol_ppb / _PPB)
            high = Tolerance(slashing.max_rtol_ppb / _PPB, slashing.max_atol_ppb / _PPB)
            t = self.tolerance
            if t.rtol < low.rtol or t.atol < low.atol:
                raise InvalidEvidenceError(f"tolerance {t} is below the network floor {low}")
            if t.rtol > high.rtol or t.atol > high.atol:
                raise InvalidEvidenceError(f"tolerance {t} is above the network cap {high}")
        for response in (self.offender, a, b):
            response.check()
        if not tensors_agree(a.outputs, b.outputs, self.tolerance):
            raise InvalidEvidenceError("the witnesses disagree with each other")
        for w in self.witnesses:
            if tensors_agree(self.offender.outputs, w.outputs, self.tolerance):
                raise InvalidEvidenceError(f"the offender's outputs agree with "
                                           f"{w.signer.short}'s within the tolerance")


def _encode_response(r: SignedOutputs) -> bytes:
    s = r.signature
    rid, model = s.request_id.encode(), s.model_digest.encode()
    if len(rid) > MAX_TEXT or len(model) > MAX_TEXT or len(r.outputs) > MAX_TENSORS:
        raise InvalidEvidenceError("response fields exceed the evidence bounds")
    parts = [key_of(s.signer), s.signature, _U16.pack(len(rid)), rid, _U16.pack(len(model)),
             model, s.inputs_digest, _U8.pack(len(r.outputs))]
    for name, datatype, shape, raw in sorted(r.outputs, key=lambda t: t[0].encode()):
        encoded = name.encode()
        if len(encoded) > MAX_TEXT or len(shape) > MAX_NDIM:
            raise InvalidEvidenceError("tensor exceeds the evidence bounds")
        parts += [_U16.pack(len(encoded)), encoded, _U8.pack(len(datatype)), datatype.encode(),
                  _U8.pack(len(shape)), *(_I64.pack(d) for d in shape),
                  _U32.pack(len(raw)), raw]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, s: struct.Struct) -> tuple[Any, ...]:
        if self.offset + s.size > len(self.data):
            raise InvalidEvidenceError("evidence truncated")
        values = s.unpack_from(self.data, self.offset)
        self.offset += s.size
        return values

    def raw(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise InvalidEvidenceError("evidence truncated")
        out = self.data[self.offset:self.offset + n]
        self.offset += n
        return out

    def number(self, s: struct.Struct) -> int:
        (value,) = self.take(s)
        assert isinstance(value, int)
        return value

    def text(self, s: struct.Struct, limit: int = MAX_TEXT) -> str:
        n = self.number(s)
        if n > limit:
            raise InvalidEvidenceError(f"a field of {n} bytes exceeds {limit}")
        try:
            return self.raw(n).decode()
        except UnicodeDecodeError as exc:
            raise InvalidEvidenceError("a text field is not UTF-8") from exc


def _decode_response(reader: _Reader) -> SignedOutputs:
    key = reader.raw(32)
    signature = reader.raw(64)
    request_id = reader.text(_U16)
    model = reader.text(_U16)
    inputs = reader.raw(32)
    count = reader.number(_U8)
    if count > MAX_TENSORS:
        raise InvalidEvidenceError(f"{count} tensors exceed {MAX_TENSORS}")
    outputs: list[Tensor] = []
    for _ in range(count):
        name = reader.text(_U16)
        datatype = reader.text(_U8)
        if datatype not in DATATYPES:
            raise InvalidEvidenceError(f"unknown datatype {datatype!r}")
        ndim = reader.number(_U8)
        if ndim > MAX_NDIM:
            raise InvalidEvidenceError(f"{ndim} dimensions exceed {MAX_NDIM}")
        shape = tuple(reader.number(_I64) for _ in range(ndim))
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_FAULT_BYTES:
            raise InvalidEvidenceError(f"bad shape {list(shape)}")
        raw = reader.raw(reader.number(_U32))
        outputs.append((name, datatype, shape, raw))
    try:
        signer = peer_of(key)
    except (IntegrityError, ValueError) as exc:
        raise InvalidEvidenceError("signer is not an Ed25519 key") from exc
    digest = tensors_digest(outputs)
    return SignedOutputs(ResponseSignature(signer, request_id, model, inputs, digest, signature),
                         tuple(outputs))
