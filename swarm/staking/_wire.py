"""One entry point for ledger items on the wire: dispatch on the leading 4-byte magic.

Everything gossip carries on the ledger topic and everything a node's `Submit` takes is one
of these, told apart by its first four bytes:

    "SWL1"  a signed transaction (swarm.staking._tx)
    "SWE1"  equivocation evidence: "SWE1" || Evidence.wire
    "SWF1"  wrong-result evidence (swarm.staking._fault; its tolerance is checked against the
            genesis bounds when a Ledger receives it, not here)

Another kind of item (wrong-result evidence, ...) registers its own magic with `register`;
nothing else needs to change for gossip, Submit and sync to carry it.
"""

from __future__ import annotations

from collections.abc import Callable

from swarm.staking._errors import MalformedTransactionError
from swarm.staking._fault import FAULT_MAGIC, FaultEvidence
from swarm.staking._tx import Evidence, SignedTransaction, decode_transaction

__all__ = ["EVIDENCE_MAGIC", "MAX_WIRE_BYTES", "TX_MAGIC", "decode_wire", "register",
           "wire_of"]

TX_MAGIC = b"SWL1"
EVIDENCE_MAGIC = b"SWE1"
# Largest item accepted anywhere (a transaction is at most ~52 KB: 64 acks, 1,024 reports;
# equivocation evidence holds two; wrong-result evidence three responses with their
# outputs); a gossip message holds < 1 MiB.
MAX_WIRE_BYTES = 512 * 1024

Decoder = Callable[[bytes, bytes], object]


def _evidence(data: bytes, chain: bytes) -> Evidence:
    return Evidence.decode(data[len(EVIDENCE_MAGIC):], chain)


_DECODERS: dict[bytes, Decoder] = {TX_MAGIC: decode_transaction, EVIDENCE_MAGIC: _evidence,
                                   FAULT_MAGIC: FaultEvidence.decode}
_ENCODERS: dict[type, Callable[[object], bytes]] = {
    SignedTransaction: lambda item: item.wire,  # type: ignore[attr-defined]
    Evidence: lambda item: EVIDENCE_MAGIC + item.wire,  # type: ignore[attr-defined]
    FaultEvidence: lambda item: item.wire,  # type: ignore[attr-defined]
}


def register(magic: bytes, kind: type, decode: Decoder, encode: Callable[[object], bytes]) -> None:
    """Teach `decode_wire`/`wire_of` another item kind (its wire starts with `magic`)."""
    if len(magic) != 4 or magic in _DECODERS:
        raise ValueError(f"magic {magic!r} is not 4 bytes or is taken")
    _DECODERS[magic] = decode
    _ENCODERS[kind] = encode


def decode_wire(data: bytes, chain: bytes) -> object:
    """Parse and verify one ledger item (a SignedTransaction, an Evidence, or a registered
    kind). Raises RejectedError subclasses: MalformedTransactionError for unknown magic or
    oversize input, and whatever the kind's decoder raises."""
    if len(data) > MAX_WIRE_BYTES:
        raise MalformedTransactionError(f"ledger item of {len(data)} bytes exceeds "
                                        f"{MAX_WIRE_BYTES}")
    decoder = _DECODERS.get(bytes(data[:4]))
    if decoder is None:
        raise MalformedTransactionError("not a ledger item (unknown magic)")
    return decoder(bytes(data), chain)


def wire_of(item: object) -> bytes:
    """The bytes `decode_wire` reads back to `item`."""
    encode = _ENCODERS.get(type(item))
    if encode is None:
        raise TypeError(f"not a ledger item: {type(item).__name__}")
    return encode(item)
