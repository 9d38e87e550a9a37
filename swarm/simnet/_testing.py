"""Test helpers: a swarm of real node processes for the test suite.

    from swarm.simnet._testing import start_swarm

    async def test_something(tmp_path):
        async with start_swarm(2, models=("builtin/mlp",), log_dir=tmp_path) as swarm:
            address = swarm.nodes[0].grpc
            await swarm.kill(1)

Every node is stopped when the block exits, however it exits. Tests that use
it start processes and load models: mark them `@pytest.mark.slow`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from swarm.simnet._cluster import Cluster, ClusterConfig, start_cluster
from swarm.simnet._scenario import NodeSpec

__all__ = ["start_swarm"]


@contextlib.asynccontextmanager
async def start_swarm(n: int, *, models: Sequence[str] = ("builtin/mlp",),
                      prices: Sequence[int] = (), slowdowns: Sequence[float] = (),
                      log_dir: Path | None = None, p2p: bool = True,
                      advert_interval: float | None = 1.0,
                      start_timeout: float = 120.0) -> AsyncIterator[Cluster]:
    """Start `n` swarm-node processes on loopback serving `models`; yield the Cluster.

    `prices[i]` (per request, micro-units) and `slowdowns[i]` apply to node i when
    given. Logs go to `log_dir` (default: a temporary folder removed afterwards).
    """
    specs = [NodeSpec(index=i, models=tuple(models),
                      price_per_request=prices[i] if i < len(prices) else 0,
                      slowdown=slowdowns[i] if i < len(slowdowns) else 1.0) for i in range(n)]
    with contextlib.ExitStack() as stack:
        folder = log_dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="swarm-test-logs-")))
        config = ClusterConfig(log_dir=folder, p2p=p2p, advert_interval=advert_interval,
                               start_timeout=start_timeout, stop_grace=5.0, drain_timeout=2.0)
        async with start_cluster(specs, config) as cluster:
            yield cluster
