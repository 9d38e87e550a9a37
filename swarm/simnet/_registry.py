"""Registry-backed models in a simulated swarm: publish versions, move tags.

Node groups may serve registry models by tag (`models = ["simnet/classifier:stable"]`).
Before the workload starts, simnet exports one torch.export program per version
(an MLP, FP32 [-1, 512] -> [-1, 512], a different seed per version), pushes them
to node 0 under a publisher key of its own, and points the tag at the first; the
nodes learn the tag over gossip, fetch the version from node 0, load it and serve
it. A `rollout` fault moves the tag to another version, a `rollback` fault moves
it back to the previous one: the same path `swarm model tag/rollback` takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarm._errors import ConfigError, UnavailableError
from swarm._types import Digest, ModelRef
from swarm.protocol import Identity
from swarm.simnet._scenario import SHIPPED_MODELS, Fault, FaultKind, Scenario

__all__ = ["PublishedModels", "publish_models", "registry_refs"]

INITIAL_VERSION = "v1"


def registry_refs(scenario: Scenario) -> list[ModelRef]:
    """Registry models (by tag) that some node group serves."""
    refs: dict[str, ModelRef] = {}
    for spec in scenario.node_specs():
        for model in spec.models:
            if model in SHIPPED_MODELS or model.endswith(".pt2"):
                continue
            ref = ModelRef.parse(model)
            if ref.tag is None:
                raise ConfigError(f"{model}: a registry model is served by tag (name:tag)")
            refs[str(ref)] = ref
    return list(refs.values())


def _versions(scenario: Scenario, ref: ModelRef) -> list[str]:
    names = [INITIAL_VERSION]
    for fault in scenario.faults:
        if (fault.kind is FaultKind.ROLLOUT and fault.model is not None
                and ModelRef.parse(fault.model).name == ref.name):
            version = fault.version or f"v{len(names) + 1}"
            if version not in names:
                names.append(version)
    return names


def export_version(path: Path, seed: int) -> None:
    """An MLP with seeded weights as a .pt2 with a dynamic batch dimension (up to 256)."""
    import torch

    from swarm.node import MLP_DIMS, mlp_module

    module = mlp_module(MLP_DIMS, seed).eval()
    example = torch.zeros(2, MLP_DIMS[0])
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


@dataclass
class PublishedModels:
    """What simnet published, and the means to move its tags."""

    address: str
    publisher: Identity
    # name -> version label -> digest
    versions: dict[str, dict[str, Digest]] = field(default_factory=dict)
    refs: list[ModelRef] = field(default_factory=list)

    def _ref(self, fault: Fault) -> ModelRef:
        assert fault.model is not None
        wanted = ModelRef.parse(fault.model)
        for ref in self.refs:
            if ref.name == wanted.name and (wanted.tag is None or wanted.tag == ref.tag):
                return ref
        raise ConfigError(f"{fault.model} is not a registry model of this run")

    async def apply(self, fault: Fault) -> str:
        """Move the tag for a rollout or rollback fault; 'applied' or why not."""
        from swarm.registry import RegistryClient, publish_tag, rollback_target

        ref = self._ref(fault)
        assert ref.tag is not None
        async with RegistryClient(self.address) as client:
            listing = await client.list_models(ref.name)
            if fault.kind is FaultKind.ROLLOUT:
                label = fault.version or list(self.versions[ref.name])[1]
                target = self.versions[ref.name].get(label)
                if target is None:
                    return f"failed: no version {label!r} was published"
            else:
                target = rollback_target(listing, ref.name, ref.tag)
            await publish_tag(client, self.publisher, ref.name, ref.tag, target,
                              now=time.time(), listing=listing)
        return "applied"


async def publish_models(scenario: Scenario, address: str, workdir: Path,
                         served: Callable[[str, Digest], bool], timeout: float) -> PublishedModels:
    """Export, push and tag every registry model; wait until `served(name, digest)` holds."""
    from swarm.registry import RegistryClient, build_manifest, publish_tag, push

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    published = PublishedModels(address, Identity.generate(), refs=registry_refs(scenario))
    async with RegistryClient(address) as client:
        for ref in published.refs:
            assert ref.tag is not None
            digests: dict[str, Digest] = {}
            for i, label in enumerate(_versions(scenario, ref)):
                path = workdir / f"{ref.name.replace('/', '_')}-{label}.pt2"
                await asyncio.to_thread(export_version, path, scenario.seed * 100 + i)
                manifest = await asyncio.to_thread(
                    build_manifest, path, ref.name, label, published.publisher,
                    created_at=time.time())
                result = await push(client, path, manifest, published.publisher)
                digests[label] = result.digest
                await publish_tag(client, published.publisher, ref.name, label, result.digest,
                                  now=time.time())
            published.versions[ref.name] = digests
            await publish_tag(client, published.publisher, ref.name, ref.tag,
                              digests[INITIAL_VERSION], now=time.time())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for ref in published.refs:
        first = published.versions[ref.name][INITIAL_VERSION]
        while not served(ref.name, first):
            if loop.time() > deadline:
                raise UnavailableError(f"{ref} was not served by every node within {timeout:g} s")
            await asyncio.sleep(0.1)
    return published
