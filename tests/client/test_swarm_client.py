"""The swarm-aware client: routing over in-process nodes that gossip in memory."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from swarm import AsyncClient, InvalidInputError, NoProviderError
from swarm.node._runtime import Model
from swarm.protocol import Identity, LightPeer
from swarm.protocol.testing import MemoryNetwork
from tests.conftest import SlowModel
from tests.waiting import wait_until


def light_peer(network: MemoryNetwork) -> LightPeer:
    async def start(identity: Identity) -> Any:
        return network.join(identity.peer_id)

    return LightPeer(start)


async def connected_client(network: MemoryNetwork, nodes: list[Any], **kwargs: Any) -> AsyncClient:
    client = AsyncClient(peer=light_peer(network), **kwargs)
    await client.start()
    await wait_until(lambda: len(client.router.view) >= len(nodes),
                     what="the client to see every provider")
    return client


def x(n: int = 1) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 512)).astype(np.float32)


async def test_routed_results_are_correct_and_spread(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp], [mlp]]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            served: Counter[str] = Counter()
            inputs = [x(i % 3 + 1) for i in range(60)]
            for chunk in range(0, 60, 12):
                results = await asyncio.gather(*(
                    client.infer_routed("builtin/mlp", v) for v in inputs[chunk:chunk + 12]))
                for (outputs, routed), v in zip(results, inputs[chunk:chunk + 12], strict=True):
                    np.testing.assert_allclose(outputs["output"], mlp.execute({"input": v})["output"],
                                               rtol=1e-5, atol=1e-5)
                    served[routed.endpoint] += 1
            assert len(served) == 3  # no herding on one provider
        finally:
            await client.close()


async def test_a_slow_node_gets_a_small_share(memory_swarm: Any, mlp: Model) -> None:
    slow = SlowModel(mlp, delay=0.05)
    async with memory_swarm([[mlp], [mlp], [slow]]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            served: Counter[str] = Counter()
            gate = asyncio.Semaphore(6)

            async def one(i: int) -> None:
                async with gate:
                    _, routed = await client.infer_routed("builtin/mlp", x())
                    served[routed.endpoint] += 1

            await asyncio.gather(*(one(i) for i in range(240)))
            slow_share = served[nodes[2].grpc_address] / 240
            assert sum(served.values()) == 240
            assert slow_share < 0.15, served
        finally:
            await client.close()


async def test_impossible_price_cap_fails_fast_with_a_clear_error(memory_swarm: Any,
                                                                   mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp]], prices=[50, 80]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            t0 = time.monotonic()
            with pytest.raises(NoProviderError, match="max_price 10") as info:
                await client.infer("builtin/mlp", x(), max_price=10)
            assert time.monotonic() - t0 < 1.0
            assert info.value.cheapest == 50
            assert info.value.reasons == {"price": 2}
            # Within the cap, only the cheap provider is used.
            for _ in range(10):
                _, routed = await client.infer_routed("builtin/mlp", x(), max_price=60)
                assert routed.endpoint == nodes[0].tls_address
                assert routed.price <= 60
        finally:
            await client.close()


async def test_a_leaving_node_costs_no_request(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp], [mlp]]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            failures: list[BaseException] = []
            done = 0

            async def load() -> None:
                nonlocal done
                for _ in range(80):
                    try:
                        await client.infer("builtin/mlp", x(), timeout=10)
                        done += 1
                    except Exception as exc:
                        failures.append(exc)

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await wait_until(lambda: done >= 40, what="the load under way")
            await nodes[1].stop()  # graceful leave mid-load
            await asyncio.gather(*workers)
            assert failures == []
            assert done == 320
        finally:
            await client.close()


async def test_invalid_input_is_not_retried(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp]]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            with pytest.raises(InvalidInputError):
                await client.infer("builtin/mlp", np.zeros((1, 3), np.float32))
            attempts = [client.router.observations.get(n.identity.peer_id).failures for n in nodes]
            assert attempts == [0, 0]  # the request was wrong, not the providers
        finally:
            await client.close()


async def test_map_spreads_inputs_and_keeps_order(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp], [mlp]]) as (network, nodes):
        client = await connected_client(network, nodes)
        try:
            inputs = [x(i % 4 + 1) for i in range(40)]
            seen: list[int] = []
            results = await client.map("builtin/mlp", inputs, concurrency=8,
                                       progress=seen.append)
            assert len(results) == 40
            assert sum(seen) == 40
            for r, v in zip(results, inputs, strict=True):
                assert isinstance(r, np.ndarray)
                assert r.shape == (v.shape[0], 512)
        finally:
            await client.close()


async def test_unknown_model_in_swarm_mode(memory_swarm: Any, mlp: Model) -> None:
    async with memory_swarm([[mlp]]) as (network, _nodes):
        client = AsyncClient(peer=light_peer(network), join_timeout=0.5)
        try:
            with pytest.raises(NoProviderError, match="no/such"):
                await client.infer("no/such", x())
        finally:
            await client.close()
