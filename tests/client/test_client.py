"""swarm.Client (blocking) and swarm.AsyncClient against an in-process node.

The node runs on the test's event loop, so the blocking client runs in a worker
thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch

import swarm
from swarm.node import Node
from swarm.node._config import ModelOptions
from swarm.node._runtime import Model
from tests.conftest import NodeFactory
from tests.node.fakes import GatedModel
from tests.waiting import wait_until

MLP = "builtin/mlp"
MINILM = "builtin/minilm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_embeddings(minilm: Model, texts: list[str]) -> np.ndarray:
    return minilm.execute({"text": np.array([t.encode() for t in texts], dtype=object)})["embedding"]


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "swarm-client"]


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
async def node(start_node: NodeFactory, minilm: Model, mlp: Model) -> AsyncIterator[Node]:
    gated = GatedModel()
    options = {MINILM: ModelOptions(max_batch_size=4), gated.name: ModelOptions(max_queue_size=1)}
    async with start_node([minilm, mlp, gated], options) as node:
        yield node


async def test_async_infer_accepts_arrays_tensors_lists_and_dicts(node: Node, mlp: Model) -> None:
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    expected = mlp.execute({"input": x})["output"]
    async with swarm.AsyncClient(node.grpc_address) as client:
        for given in (x, torch.from_numpy(x), x.astype(np.float64).tolist(), {"input": x}):
            out = await client.infer(MLP, given)
            assert isinstance(out, np.ndarray), type(given)
            assert out.shape == (3, 512)
            assert out.dtype == np.float32
            close(out, expected)
        raw = await client.infer_raw(MLP, x)
        assert list(raw) == ["output"]
        close(raw["output"], expected)
        pair = await client.infer("test/gated", {"a": np.ones((2, 2), np.float32),
                                                 "b": np.full((2, 2), 2, np.float32)})
        assert isinstance(pair, np.ndarray)
        np.testing.assert_array_equal(pair, np.full((2, 2), 3, np.float32))


async def test_outputs_are_ordinary_writable_arrays(node: Node) -> None:
    async with swarm.AsyncClient(node.grpc_address) as client:
        out = await client.infer(MLP, np.zeros((1, 512), np.float32))
    assert isinstance(out, np.ndarray)
    out += 1  # users expect to own the result
    torch.from_numpy(out)  # no "non-writable array" warning (warnings are errors here)


async def test_async_embed_matches_the_node_model_and_splits_in_order(node: Node,
                                                                    minilm: Model) -> None:
    texts = [f"sentence number {i} about {w}" for i, w in enumerate(
        ["cats", "gpus", "rivers", "latency", "bread", "music", "stars", "code", "tea", "rain"])]
    async with swarm.AsyncClient(node.grpc_address) as client:
        one = await client.embed(["hello world"])
        assert one.shape == (1, 384)
        close(one, node_embeddings(minilm, ["hello world"]))
        # The node takes at most 4 texts per request; 10 texts go as 3 requests, in order.
        many = await client.embed(texts)
        assert many.shape == (10, 384)
        close(many, node_embeddings(minilm, texts))
        for bad in ("just one string", []):
            with pytest.raises(swarm.InvalidInputError):
                await client.embed(bad)  # type: ignore[arg-type]
    stats = node.table.resolve(MINILM).stats
    assert stats.inference_count == 11
    assert stats.success.count == 4


async def test_async_models_and_metadata(node: Node, mlp: Model, minilm: Model) -> None:
    async with swarm.AsyncClient(node.grpc_address) as client:
        models = await client.models()
        info = await client.metadata(MLP)
        by_version = await client.metadata(MLP, version=mlp.digest.hex[:16])
    assert [m.name for m in models] == [MINILM, MLP, "test/gated"]
    assert info == swarm.ModelInfo(
        name=MLP, versions=(str(mlp.digest),), platform="swarm_builtin",
        inputs=(swarm.TensorInfo("input", "FP32", (-1, 512)),),
        outputs=(swarm.TensorInfo("output", "FP32", (-1, 512)),),
        max_batch_size=mlp.spec.max_batch_size)
    assert by_version == info
    text = next(m for m in models if m.name == MINILM)
    assert text.max_batch_size == 4
    assert text.inputs == (swarm.TensorInfo("text", "BYTES", (-1,)),)
    assert text.versions == (str(minilm.digest),)


async def test_async_errors_map_to_swarm_exceptions(node: Node) -> None:
    gated = node.table.resolve("test/gated").model
    assert isinstance(gated, GatedModel)
    ones = np.ones((1, 2), np.float32)
    async with swarm.AsyncClient(node.grpc_address) as client:
        with pytest.raises(swarm.ModelNotFoundError):
            await client.infer("no/such-model", {"x": ones})
        with pytest.raises(swarm.ModelNotFoundError):
            await client.metadata("no/such-model")
        with pytest.raises(swarm.InvalidInputError):
            await client.infer(MLP, np.zeros((1, 3), np.float32))
        with pytest.raises(swarm.InvalidInputError, match="dict"):
            await client.infer("test/gated", ones)  # two inputs need names
        pair = {"a": ones, "b": ones}
        batcher = node.table.resolve("test/gated").batcher
        gated.gate.clear()
        try:
            busy = asyncio.create_task(client.infer("test/gated", pair))
            await asyncio.to_thread(gated.running.wait, 10)
            queued = asyncio.create_task(client.infer("test/gated", pair))
            await wait_until(lambda: batcher.queue_depth == 1, what="a request queued")
            with pytest.raises(swarm.OverloadedError):  # max_queue_size=1
                await client.infer("test/gated", pair)
        finally:
            gated.gate.set()
        await asyncio.gather(busy, queued)
        gated.running.clear()
        gated.gate.clear()
        try:
            busy = asyncio.create_task(client.infer("test/gated", pair))
            await asyncio.to_thread(gated.running.wait, 10)
            with pytest.raises(swarm.DeadlineExceededError):
                await client.infer("test/gated", pair, timeout=0.05)
        finally:
            gated.gate.set()
        await busy
    async with swarm.AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as nobody:
        with pytest.raises(swarm.UnavailableError):
            await nobody.infer(MLP, np.zeros((1, 512), np.float32))
    for error in (swarm.ModelNotFoundError, swarm.InvalidInputError, swarm.UnavailableError):
        assert issubclass(error, swarm.InferenceError)
        assert issubclass(error, swarm.SwarmError)


async def test_async_closed_client_refuses_use(node: Node) -> None:
    client = swarm.AsyncClient(node.grpc_address)
    await client.infer(MLP, np.zeros((1, 512), np.float32))
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(swarm.SwarmError, match="closed"):
        await client.infer(MLP, np.zeros((1, 512), np.float32))
    with pytest.raises(swarm.SwarmError):
        await client.models()
    with pytest.raises(swarm.SwarmError):
        swarm.AsyncClient("")


async def test_sync_client(node: Node, mlp: Model, minilm: Model) -> None:
    x = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)
    address = node.grpc_address
    texts = [f"text {i}" for i in range(9)]

    def drive() -> dict[str, Any]:
        with swarm.Client(address) as client:
            assert client.address == address
            result: dict[str, Any] = {
                "array": client.infer(MLP, x),
                "tensor": client.infer(MLP, torch.from_numpy(x)),
                "dict": client.infer(MLP, {"input": x}),
                "embed": client.embed(texts),
                "models": [m.name for m in client.models()],
                "meta": client.metadata(MINILM),
            }
            with pytest.raises(swarm.ModelNotFoundError):
                client.infer("no/such-model", x)
            with pytest.raises(swarm.InvalidInputError):
                client.infer(MLP, x[:, :100])
        with pytest.raises(swarm.SwarmError, match="closed"):
            client.infer(MLP, x)
        client.close()  # idempotent
        with swarm.Client(f"127.0.0.1:{free_port()}", timeout=5) as nobody, \
                pytest.raises(swarm.UnavailableError):
            nobody.models()
        return result

    out = await asyncio.to_thread(drive)
    expected = mlp.execute({"input": x})["output"]
    for key in ("array", "tensor", "dict"):
        close(out[key], expected)
    close(out["embed"], node_embeddings(minilm, texts))
    assert out["models"] == [MINILM, MLP, "test/gated"]
    assert out["meta"].max_batch_size == 4
    assert client_threads() == []  # closed clients leave no thread behind


def test_sync_client_with_a_bad_address_leaves_no_thread() -> None:
    with pytest.raises(swarm.SwarmError):
        swarm.Client("")
    assert client_threads() == []


async def test_float64_arrays_are_sent_as_the_models_fp32(start_node: NodeFactory, mlp: Model) -> None:
    x = np.random.default_rng(5).standard_normal((2, 512))  # numpy's default dtype: float64
    async with start_node([mlp]) as node, swarm.AsyncClient(node.grpc_address) as client:
        out = await client.infer("builtin/mlp", x)
    expected = mlp.execute({"input": x.astype(np.float32)})["output"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)  # type: ignore[arg-type]


def test_peers_table_names_models_with_their_tags() -> None:
    from swarm.cli._client_commands import _model_cell

    digest = "sha256:" + "ab" * 32
    assert _model_cell({"name": "builtin/mlp", "tags": [], "digest": digest}) == \
        "builtin/mlp abababababab"
    assert _model_cell({"name": "acme/c", "tags": ["stable", "v2"], "digest": digest}) == \
        "acme/c:stable,v2 abababababab"


def test_swarm_client_allowlist_takes_hex_or_raw_keys() -> None:
    from swarm._errors import SwarmError
    from swarm.client import AsyncClient

    key = bytes(range(32))
    AsyncClient(bootstrap=["/ip4/127.0.0.1/tcp/1/p2p/x"], allowlist={"acme": [key, key.hex()]})
    with pytest.raises(SwarmError, match="not hex"):
        AsyncClient(bootstrap=["/ip4/127.0.0.1/tcp/1/p2p/x"], allowlist={"acme": ["zz"]})
    with pytest.raises(SwarmError, match="32-byte"):
        AsyncClient(bootstrap=["/ip4/127.0.0.1/tcp/1/p2p/x"], allowlist={"acme": [b"short"]})
