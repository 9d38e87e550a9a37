"""Signed envelopes: `{payload, signature}` where the signature covers a domain tag
plus the exact payload bytes.

Adverts, tag records and manifests all travel this way. Verifying the exact
bytes (not a re-encoding) lets a newer author add fields an older reader does not
know: they are carried and signed all the same. The domain tag keeps a signature
made for one kind of message from being valid for another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from swarm._errors import IntegrityError
from swarm.protocol._identity import Identity, verify

__all__ = ["open_envelope", "seal"]

P = TypeVar("P", bound=Message)


def seal(envelope: type[Message], domain: bytes, payload: bytes, identity: Identity) -> bytes:
    """The serialized `envelope(payload=..., signature=...)` signed by `identity`."""
    make: Any = envelope  # any envelope message type with payload and signature fields
    sealed = make(payload=payload, signature=identity.sign(domain + payload))
    return bytes(sealed.SerializeToString())


def open_envelope(data: bytes, envelope: type[Message], payload_type: type[P], *,
                  domain: bytes, max_bytes: int, what: str,
                  key: Callable[[P], bytes]) -> tuple[P, bytes]:
    """Parse and verify; returns the payload message and its exact bytes.

    `key(payload)` names the public key that must have signed it (the author's key
    inside the payload). Raises IntegrityError on anything wrong.
    """
    if len(data) > max_bytes:
        raise IntegrityError(f"{what} of {len(data)} bytes exceeds {max_bytes}")
    try:
        signed: Any = envelope.FromString(data)
        message = payload_type.FromString(signed.payload)
    except DecodeError as exc:
        raise IntegrityError(f"{what} is not a valid {envelope.__name__}") from exc
    try:
        public_key = key(message)
    except ValueError as exc:
        raise IntegrityError(f"{what}: {exc}") from exc
    if len(public_key) != 32 or not verify(public_key, signed.signature, domain + signed.payload):
        raise IntegrityError(f"bad signature on {what}")
    return message, bytes(signed.payload)
