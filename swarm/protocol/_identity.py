"""Node identity: a persistent Ed25519 key; its libp2p peer id; signing.

The same key is the libp2p host identity and signs every advert and tag.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarm._errors import ConfigError, InvalidReferenceError
from swarm._types import PeerId

if TYPE_CHECKING:
    from nacl.signing import SigningKey

__all__ = ["Identity", "peer_id_of", "public_key_of_peer", "verify"]

# libp2p PublicKey protobuf: field 1 (KeyType) = Ed25519 (1), field 2 = 32 key bytes.
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"


def peer_id_of(public_key: bytes) -> PeerId:
    """libp2p peer id of a raw 32-byte Ed25519 public key (identity multihash, base58btc)."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    encoded = _LIBP2P_ED25519_PREFIX + public_key
    return PeerId(base58.b58encode(bytes([0x00, len(encoded)]) + encoded).decode())


def public_key_of_peer(peer_id: PeerId) -> bytes:
    """The Ed25519 public key inlined in a peer id (InvalidReferenceError if there is none)."""
    raw = base58.b58decode(peer_id.value)
    if len(raw) != 38 or raw[:2] != b"\x00\x24" or raw[2:6] != _LIBP2P_ED25519_PREFIX:
        raise InvalidReferenceError(f"{peer_id} does not inline an Ed25519 key")
    return raw[6:]


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Read the key at `path`, or create it (mode 0600, written atomically)."""
        path = path.expanduser()
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = cls.generate()
        pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if another process created the key meanwhile
            except FileExistsError:
                return cls.load(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return identity

    @classmethod
    def load(cls, path: Path) -> Identity:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by others; run: chmod 600 {path}")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
        return cls(key)

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @cached_property
    def peer_id(self) -> PeerId:
        return peer_id_of(self.public_key)

    @cached_property
    def _signer(self) -> SigningKey:
        from nacl.signing import SigningKey

        return SigningKey(self.seed)

    def sign(self, message: bytes) -> bytes:
        # libsodium (PyNaCl) signs ~2.7x faster than OpenSSL here (43 vs 119 us, and the node
        # signs every response: bench/RESULTS.md, issue 16). Ed25519 signatures are
        # deterministic, so the bytes are the same as the private key's own sign().
        return self._signer.sign(message).signature
