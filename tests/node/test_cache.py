"""The response cache: LRU bounds, key stability and sensitivity, and hits through a node."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import swarm
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._types import Digest
from swarm.node._cache import ResponseCache, cache_key
from swarm.node._config import ModelOptions
from swarm.node._metrics import NodeMetrics
from tests.conftest import NodeFactory
from tests.node.fakes import GatedModel

D1 = Digest.of(b"model one")
D2 = Digest.of(b"model two")


def out(value: float, n: int = 4) -> dict[str, np.ndarray]:
    return {"y": np.full(n, value, np.float32)}


# --------------------------------------------------------------------------- LRU


def test_entry_bound_evicts_least_recently_used() -> None:
    cache = ResponseCache(max_entries=3)
    for key in (b"a", b"b", b"c"):
        cache.put(key, out(ord(key)))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"d", out(4))
    assert len(cache) == 3
    assert cache.get(b"b") is None
    assert [cache.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]


def test_byte_bound_evicts_until_it_fits() -> None:
    entry = 16 + 1  # four float32 and a one-byte key
    cache = ResponseCache(max_entries=100, max_bytes=5 * entry)
    for key in (b"a", b"b", b"c", b"d", b"e", b"f"):
        cache.put(key, out(1.0))
        assert cache.bytes_held <= 5 * entry
    assert len(cache) == 5
    assert cache.get(b"a") is None
    cache.put(b"big", out(1.0, n=8))  # 32 + 3 bytes: the three oldest make room
    assert cache.bytes_held == 2 * entry + 35
    assert [k for k in (b"b", b"c", b"d", b"e", b"f", b"big") if cache.get(k) is not None] == [
        b"e", b"f", b"big"]
    cache.put(b"huge", out(1.0, n=1000))  # larger than the whole cache: not stored
    assert cache.get(b"huge") is None
    assert cache.get(b"big") is not None


def test_replacing_a_key_does_not_leak_bytes() -> None:
    cache = ResponseCache(max_bytes=1000)
    for i in range(10):
        cache.put(b"k", out(i))
    assert len(cache) == 1
    assert cache.bytes_held == 16 + 1
    got = cache.get(b"k")
    assert got is not None
    assert got["y"][0] == 9


def test_cached_outputs_are_copies() -> None:
    cache = ResponseCache()
    source = out(1.0)
    cache.put(b"k", source)
    source["y"][:] = 7
    got = cache.get(b"k")
    assert got is not None
    np.testing.assert_array_equal(got["y"], np.ones(4, np.float32))


@pytest.mark.parametrize("bounds", [(0, 10), (10, 0), (-1, 10)])
def test_bounds_must_be_positive(bounds: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        ResponseCache(max_entries=bounds[0], max_bytes=bounds[1])


# --------------------------------------------------------------------------- keys


def test_key_is_stable_across_equal_inputs() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.array([[1, 2]], np.int64)
    key = cache_key(D1, {"x": x, "ids": ids})
    assert len(key) == 16
    assert cache_key(D1, {"ids": ids.copy(), "x": x.copy()}) == key  # order, identity
    wide = np.zeros((3, 8), np.float32)
    wide[:, ::2] = x
    assert cache_key(D1, {"x": wide[:, ::2], "ids": ids}) == key  # non-contiguous view
    assert cache_key(D1, {"x": x.astype(">f4"), "ids": ids}) == key  # byte order


def test_key_changes_with_anything_that_changes_the_answer() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    base = cache_key(D1, {"x": x})
    changed = {
        "bytes": cache_key(D1, {"x": x + 1}),
        "shape": cache_key(D1, {"x": x.reshape(4, 2)}),
        "dtype": cache_key(D1, {"x": x.view(np.int32)}),
        "digest": cache_key(D2, {"x": x}),
        "name": cache_key(D1, {"y": x}),
        "extra input": cache_key(D1, {"x": x, "z": np.zeros(1, np.float32)}),
    }
    for what, key in changed.items():
        assert key != base, what
    assert len(set(changed.values())) == len(changed)
    texts = cache_key(D1, {"t": np.array([b"ab", b"c"], dtype=object)})
    assert texts != cache_key(D1, {"t": np.array([b"a", b"bc"], dtype=object)})
    assert texts == cache_key(D1, {"t": np.array(["ab", "c"], dtype=object)})


# --------------------------------------------------------------------------- through a node


async def test_identical_request_is_served_from_the_cache(start_node: NodeFactory) -> None:
    cached, plain = GatedModel("test/cached"), GatedModel("test/plain")
    options = {cached.name: ModelOptions(cache=True)}
    a = np.array([[1.0, 2.0]], np.float32)
    b = np.array([[0.5, 0.25]], np.float32)
    async with start_node([cached, plain], options) as node, \
            swarm.AsyncClient(node.grpc_address) as client:
        first = await client.infer_raw(cached.name, {"a": a, "b": b})
        second = await client.infer_raw(cached.name, {"a": a.copy(), "b": b.copy()})
        assert cached.batches == [1]  # the second request never reached the model
        assert first.keys() == second.keys() == {"out"}
        assert first["out"].tobytes() == second["out"].tobytes()
        await client.infer(cached.name, {"a": a, "b": b + 1})  # different input: a miss
        assert cached.batches == [1, 1]
        for _ in range(2):  # caching is per model: this one always computes
            await client.infer(plain.name, {"a": a, "b": b})
        assert plain.batches == [1, 1]
        text = node.metrics.render().decode()
        async with grpc.aio.insecure_channel(node.grpc_address) as channel:
            stats = await pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name=cached.name), timeout=10)
    infer_stats = stats.model_stats[0].inference_stats
    assert infer_stats.cache_hit.count == 1
    assert infer_stats.cache_miss.count == 2
    assert infer_stats.success.count == 3
    assert stats.model_stats[0].inference_count == 3
    assert stats.model_stats[0].execution_count == 2
    assert f'swarm_cache_hits_total{{model="{cached.name}"}} 1.0' in text
    assert f'swarm_cache_misses_total{{model="{cached.name}"}} 2.0' in text
    assert f'swarm_cache_hits_total{{model="{plain.name}"}}' not in text


async def test_node_cache_respects_its_byte_bound(start_node: NodeFactory) -> None:
    model = GatedModel()
    a = np.zeros((1, 2), np.float32)
    async with start_node([model], {model.name: ModelOptions(cache=True)},
                          cache_max_bytes=64) as node, \
            swarm.AsyncClient(node.grpc_address) as client:
        for i in range(10):
            await client.infer(model.name, {"a": a + i, "b": a})
        assert node.cache.bytes_held <= 64
        assert 1 <= len(node.cache) < 10
        await client.infer(model.name, {"a": a + 9, "b": a})  # the newest is still held
        assert len(model.batches) == 10


def test_metrics_registry_is_per_node() -> None:
    one, two = NodeMetrics(), NodeMetrics()
    one.cache_hits.labels("m").inc()
    assert b'swarm_cache_hits_total{model="m"} 1.0' in one.render()
    assert b"swarm_cache_hits_total{" not in two.render()
