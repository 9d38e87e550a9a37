"""Local replicas on CPU: a node's throughput with 1 and with 2 instances of builtin/mlp.

One in-process node (loopback gRPC), devices cpu,cpu, --torch-threads 1 (each instance's
forward pass on one thread), --replicas off so that nothing changes on its own: the second
instance is added by hand, through the node's own load path. C clients send batches of B
rows back to back for S seconds per setting; the script prints items/s and latency.

    .venv/bin/python bench/replicas_bench.py --seconds 10 --clients 8 --batch 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from swarm.autoscale import LocalConfig
from swarm.client import AsyncClient
from swarm.node import Node, NodeConfig


async def _drive(client: AsyncClient, clients: int, batch: int, seconds: float) -> tuple[float, list[float]]:
    x = np.ones((batch, 512), np.float32)
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def one() -> None:
        for _ in range(1_000_000):  # bounded; ends at `end`
            if time.monotonic() >= end:
                return
            started = time.perf_counter()
            await client.infer_raw("builtin/mlp", x)
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(clients)))
    return len(latencies) * batch / (time.monotonic() - started), latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig.local(Path(tmp), serve=("builtin/mlp",), device="cpu",
                                  devices=("cpu", "cpu"), torch_threads=1,
                                  replicas=LocalConfig(mode="off"))
        async with Node(config) as node, AsyncClient(node.grpc_address) as client:
            served = node.table.resolve("builtin/mlp")
            await _drive(client, args.clients, args.batch, 1.0)  # warm-up
            for instances in (1, 2):
                if instances == 2:
                    model = await asyncio.to_thread(node._load_on, "builtin/mlp", "cpu")
                    node._owned.append(model)
                    served.batcher.add_instance(model)
                rate, latencies = await _drive(client, args.clients, args.batch, args.seconds)
                q = statistics.quantiles(latencies, n=100)
                print(f"instances {instances}: {rate:,.0f} items/s  p50 {q[49] * 1e3:.1f} ms  "
                      f"p99 {q[98] * 1e3:.1f} ms  batches per instance "
                      f"{served.batcher.batches_per_instance}  advert items/s "
                      f"{served.batcher.items_per_second:,.0f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
