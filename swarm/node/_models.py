"""Served models: loading by reference, per-version serving state, name/version lookup."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from swarm._errors import ConfigError, ModelNotFoundError
from swarm._types import Digest, ModelRef
from swarm.node._batching import Batcher, BatchPolicy
from swarm.node._builtins import BUILTINS, load_builtin
from swarm.node._config import ModelOptions
from swarm.node._export import load_file
from swarm.node._runtime import Model

__all__ = ["ModelStats", "ModelTable", "ServedModel", "load_model", "policy_for",
           "served_batch_size"]


@dataclass
class DurationStat:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9) * n


@dataclass
class BatchStat:
    compute_input: DurationStat = field(default_factory=DurationStat)
    compute_infer: DurationStat = field(default_factory=DurationStat)
    compute_output: DurationStat = field(default_factory=DurationStat)


@dataclass
class ModelStats:
    """Cumulative statistics in the shape of Triton's ModelStatistics."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: DurationStat = field(default_factory=DurationStat)
    fail: DurationStat = field(default_factory=DurationStat)
    queue: DurationStat = field(default_factory=DurationStat)
    compute_input: DurationStat = field(default_factory=DurationStat)
    compute_infer: DurationStat = field(default_factory=DurationStat)
    compute_output: DurationStat = field(default_factory=DurationStat)
    cache_hit: DurationStat = field(default_factory=DurationStat)
    cache_miss: DurationStat = field(default_factory=DurationStat)
    batches: dict[int, BatchStat] = field(default_factory=dict)


@dataclass
class ServedModel:
    model: Model
    batcher: Batcher
    options: ModelOptions
    stats: ModelStats = field(default_factory=ModelStats)
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def digest(self) -> Digest:
        return self.model.digest


class ModelTable:
    """Models by name; each name has one default version and may hold several by digest.

    A request may also name a model as `--serve` did: `acme/classifier:stable` (a tag
    the node follows: its rollout keeps the name's default version at what the tag
    names) or `acme/classifier@sha256:...` (that version).
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, ServedModel]] = {}
        self._default: dict[str, str] = {}
        self._tags: dict[str, set[str]] = {}

    def follow(self, name: str, tag: str) -> None:
        """Requests for `name:tag` go to `name`'s default version."""
        self._tags.setdefault(name, set()).add(tag)

    def _split(self, model: str, version: str) -> tuple[str, str]:
        """(name, version) for a model named by a reference with a tag or a digest."""
        if ":" not in model and "@" not in model:
            return model, version
        try:
            ref = ModelRef.parse(model)
        except ValueError as exc:
            raise ModelNotFoundError(f"model {model!r} is not served here ({exc})") from exc
        if ref.digest is not None:
            if version and version.removeprefix("sha256:") != ref.digest.hex:
                raise ModelNotFoundError(
                    f"model {model!r} names version {ref.digest}, the request {version!r}")
            return ref.name, ref.digest.hex
        if version:  # the version pins it (a gateway forwards `name:tag` with the digest)
            return ref.name, version
        tags = self._tags.get(ref.name, set())
        if ref.tag not in tags:
            following = ", ".join(f"{ref.name}:{t}" for t in sorted(tags)) or "no tag of it"
            raise ModelNotFoundError(
                f"model {model!r} is not served here (this node follows {following})")
        return ref.name, version

    def add(self, served: ServedModel, *, default: bool = True) -> None:
        versions = self._versions.setdefault(served.name, {})
        versions[served.digest.hex] = served
        if default or served.name not in self._default:
            self._default[served.name] = served.digest.hex

    def remove(self, name: str, digest: Digest) -> ServedModel | None:
        versions = self._versions.get(name, {})
        served = versions.pop(digest.hex, None)
        if not versions:
            self._versions.pop(name, None)
            self._default.pop(name, None)
        elif self._default.get(name) == digest.hex:
            self._default[name] = next(iter(versions))
        return served

    def resolve(self, name: str, version: str = "") -> ServedModel:
        """The served model for a name and optional version (digest, bare hex or unique prefix)."""
        name, version = self._split(name, version)
        versions = self._versions.get(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} is not served here")
        if not version:
            return versions[self._default[name]]
        key = version.removeprefix("sha256:")
        if key in versions:
            return versions[key]
        matches = [v for k, v in versions.items() if len(key) >= 8 and k.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        raise ModelNotFoundError(f"model {name!r} has no version {version!r} here")

    def versions(self, name: str) -> list[ServedModel]:
        """Every version served for `name` (for a reference: the one it names, if served)."""
        if ":" in name or "@" in name:
            try:
                return [self.resolve(name)]
            except ModelNotFoundError:
                return []
        return list(self._versions.get(name, {}).values())

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._versions.values():
            yield from versions.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())


def policy_for(model: Model, options: ModelOptions) -> BatchPolicy:
    max_batch = options.max_batch_size or model.spec.max_batch_size
    max_batch = min(max_batch, model.spec.max_batch_size)
    return BatchPolicy(
        max_batch_size=max_batch,
        max_queue_delay=options.max_queue_delay,
        max_queue_delay_fraction=options.max_queue_delay_fraction,
        preferred_batch_sizes=tuple(p for p in options.preferred_batch_sizes if p <= max_batch),
        max_queue_size=options.max_queue_size,
        enabled=options.batching,
    )


def served_batch_size(declared: int, options: ModelOptions, bound: int) -> int:
    """The largest batch a registry version is served and warmed up with.

    `declared` is the publisher's (its manifest), which anyone can set to 2**32-1;
    the node's `bound` caps it, unless the operator set this model's own
    `max_batch_size` option, which is the cap then (it may be higher or lower).
    """
    return max(1, min(declared, options.max_batch_size or bound))


def _local_name(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._") or "model"
    return f"local/{stem}"


def load_model(ref: str, device: torch.device) -> Model:
    """Load a model named on the command line: a built-in or a local .pt2 file."""
    if ref.endswith(".pt2"):
        path = Path(ref).expanduser()
        return load_file(path, _local_name(path), device)
    parsed = ModelRef.parse(ref)
    if parsed.name in BUILTINS:
        return load_builtin(parsed.name, device)
    raise ConfigError(
        f"cannot serve {ref!r}: not a built-in ({', '.join(BUILTINS)}) or a .pt2 file"
    )
