"""Distinct identifier types (Digest, ModelRef, PeerId), TensorSpec and ModelSpec, shared without torch."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from swarm._errors import InvalidReferenceError

__all__ = ["Digest", "ModelRef", "ModelSpec", "PeerId", "TensorSpec"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Digest:
    """A SHA-256 content digest, written `sha256:<64 hex>`.

    Malformed text raises InvalidReferenceError (a ValueError), as for ModelRef and PeerId.
    """

    hex: str

    def __post_init__(self) -> None:
        if not _HEX64.match(self.hex):
            raise InvalidReferenceError(f"not a sha256 hex digest: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algo, sep, rest = text.partition(":")
        if not sep or algo != "sha256":
            raise InvalidReferenceError(f"digest must look like sha256:<64 hex>, got {text!r}")
        return cls(rest)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    @property
    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A reference to a model: `org/name`, `org/name:tag` or `org/name@sha256:...`.

    The name is what clients use everywhere (SDK, CLI, the OIP model name).
    """

    name: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidReferenceError(
                f"model name must be lowercase 'namespace/name' (letters, digits, . _ -): "
                f"{self.name!r}"
            )
        if self.tag is not None and not _TAG.match(self.tag):
            raise InvalidReferenceError(f"invalid tag {self.tag!r}")
        if self.tag is not None and self.digest is not None:
            raise InvalidReferenceError("a model reference takes a tag or a digest, not both")

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, at, digest = text.partition("@")
        if at:
            return cls(name, digest=Digest.parse(digest))
        name, colon, tag = text.partition(":")
        return cls(name, tag=tag if colon else None)

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return self.name


@dataclass(frozen=True, slots=True)
class PeerId:
    """A libp2p peer id (base58btc of the multihash of the public key), e.g. `12D3KooW...`."""

    value: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{40,60}", self.value):
            raise InvalidReferenceError(f"not a base58 peer id: {self.value!r}")

    @property
    def short(self) -> str:
        return self.value[-8:]

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared input or output. `shape[0]` is the batch dimension (-1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model version takes and gives, as the Open Inference Protocol describes it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Most items (rows along dim 0) one forward pass takes.
    max_batch_size: int
    # OIP "platform" string reported in metadata.
    platform: str
