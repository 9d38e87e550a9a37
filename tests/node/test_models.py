"""ModelTable: what a request's model name and version resolve to."""

from __future__ import annotations

import pytest

from swarm._errors import ModelNotFoundError
from swarm._types import Digest
from swarm.node._batching import Batcher, BatchPolicy
from swarm.node._config import ModelOptions
from swarm.node._models import ModelTable, ServedModel
from tests.node.fakes import GatedModel


def served(name: str, content: bytes) -> ServedModel:
    model = GatedModel(name)
    model.digest = Digest.of(content)
    return ServedModel(model, Batcher(model, BatchPolicy(max_batch_size=8)), ModelOptions())


@pytest.fixture
def table() -> tuple[ModelTable, ServedModel, ServedModel]:
    table = ModelTable()
    v1, v2 = served("acme/classifier", b"v1"), served("acme/classifier", b"v2")
    table.add(v1)
    table.add(v2, default=False)
    table.follow("acme/classifier", "stable")
    return table, v1, v2


def test_name_version_and_references(table: tuple[ModelTable, ServedModel, ServedModel]) -> None:
    t, v1, v2 = table
    assert t.resolve("acme/classifier") is v1  # the default version
    assert t.resolve("acme/classifier", str(v2.digest)) is v2
    assert t.resolve("acme/classifier", v2.digest.hex[:12]) is v2  # a unique prefix
    assert t.resolve("acme/classifier:stable") is v1  # a followed tag: the default
    assert t.resolve("acme/classifier:stable", str(v2.digest)) is v2
    assert t.resolve("acme/classifier:canary", str(v2.digest)) is v2  # the version decides
    assert t.resolve(f"acme/classifier@{v2.digest}") is v2  # pinned by digest
    assert t.resolve(f"acme/classifier@{v2.digest}", v2.digest.hex) is v2
    assert t.versions("acme/classifier:stable") == [v1]
    assert t.versions(f"acme/classifier@{v2.digest}") == [v2]
    assert sorted(s.digest.hex for s in t.versions("acme/classifier")) == sorted(
        [v1.digest.hex, v2.digest.hex])
    t.add(v2)  # a rollout moves the default: the tag follows it
    assert t.resolve("acme/classifier:stable") is v2


def test_unserved_references_are_not_found(table: tuple[ModelTable, ServedModel, ServedModel]) -> None:
    t, v1, v2 = table
    with pytest.raises(ModelNotFoundError, match="this node follows acme/classifier:stable"):
        t.resolve("acme/classifier:canary")
    assert t.versions("acme/classifier:canary") == []
    with pytest.raises(ModelNotFoundError, match="follows no tag"):
        t.resolve("acme/other:stable")
    other = Digest.of(b"never served")
    with pytest.raises(ModelNotFoundError, match="no version"):
        t.resolve(f"acme/classifier@{other}")
    assert t.versions(f"acme/classifier@{other}") == []
    with pytest.raises(ModelNotFoundError, match="names version"):  # two versions disagree
        t.resolve(f"acme/classifier@{v1.digest}", str(v2.digest))
    for bad in ("acme/classifier:", "Acme/x:stable", "acme/classifier@sha256:zz", ":stable"):
        with pytest.raises(ModelNotFoundError, match="not served here"):
            t.resolve(bad)
        assert t.versions(bad) == []
