"""Real node processes: banner parsing, faults, and cleanup that leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from swarm.client import AsyncClient
from swarm.simnet._cluster import NodeStatus, parse_banner
from swarm.simnet._testing import start_swarm
from tests.simnet.helpers import alive, process_state
from tests.waiting import wait_until

BANNER = """\
11:15:14.063 info    swarm.node: node serving peer=12D3KooWE grpc=127.0.0.1:44269
swarm-node 0.1.0 serving
  peer id  12D3KooWEtjp
  grpc     127.0.0.1:44269
  metrics  http://127.0.0.1:38817/metrics
  model    builtin/minilm  sha256:aaaa
  model    builtin/mlp  sha256:bbbb
  p2p      /ip4/127.0.0.1/tcp/42971/p2p/12D3KooWEtjp
"""


def test_parse_banner() -> None:
    banner = parse_banner(BANNER)
    assert banner.peer_id == "12D3KooWEtjp"
    assert banner.grpc == "127.0.0.1:44269"
    assert banner.metrics == "http://127.0.0.1:38817/metrics"
    assert banner.models == (("builtin/minilm", "sha256:aaaa"), ("builtin/mlp", "sha256:bbbb"))
    assert banner.p2p == ("/ip4/127.0.0.1/tcp/42971/p2p/12D3KooWEtjp",)


def test_parse_partial_banner() -> None:
    banner = parse_banner("swarm-node 0.1.0 serving\n  peer id  X\n  grpc     h:1\n")
    assert banner.grpc == "h:1"
    assert banner.models == ()
    assert banner.p2p == ()
    assert parse_banner("") == parse_banner("log line\n")


async def infer(address: str) -> np.ndarray:
    async with AsyncClient(address) as client:
        out = await client.infer("builtin/mlp", np.ones((1, 512), np.float32), timeout=10)
    assert isinstance(out, np.ndarray)
    return out


class Escape(Exception):
    """Leaves the swarm's block by an exception, carrying the pids it saw."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__("leaving the block by an exception")
        self.pids = pids


async def exercise_faults(log_dir: Path) -> None:
    async with start_swarm(2, prices=(5, 7), log_dir=log_dir) as swarm:
        first, second = swarm.nodes
        assert first is not None
        assert second is not None
        assert [swarm.status(i) for i in range(2)] == [NodeStatus.UP, NodeStatus.UP]
        assert first.peer_id != second.peer_id
        assert (first.price_per_request, second.price_per_request) == (5, 7)
        assert (log_dir / "node-0.log").exists()
        # Each node runs in a process group of its own.
        assert os.getpgid(first.pid) == first.pid
        assert os.getpgid(second.pid) == second.pid
        if first.p2p:  # peer-to-peer on: the second node bootstrapped from the first
            assert "--bootstrap" in (log_dir / "node-1.log").read_text()
        else:
            assert swarm.notes
        await infer(first.grpc)

        # slow: the process is stopped part of the time, then runs freely again
        swarm.set_slowdown(0, 5.0)
        assert swarm.status(0) is NodeStatus.SLOW
        await wait_until(lambda: process_state(first.pid) == "T", timeout=20,
                         what="the slowed node stopped part of the time")
        await infer(first.grpc)  # slow, not dead
        swarm.set_slowdown(0, 1.0)
        assert swarm.status(0) is NodeStatus.UP
        await wait_until(lambda: process_state(first.pid) in ("R", "S"), timeout=20,
                         what="the node running freely again")
        await infer(first.grpc)

        # kill, then rejoin with the same identity
        await swarm.kill(1)
        assert swarm.status(1) is NodeStatus.DOWN
        assert not alive([second.pid])
        again = await swarm.rejoin(1)
        assert swarm.status(1) is NodeStatus.UP
        assert again.peer_id == second.peer_id
        assert again.pid != second.pid
        assert again.incarnation == 2
        assert swarm.history[-1] == again
        await infer(again.grpc)

        # leave: graceful
        await swarm.leave(0)
        assert swarm.status(0) is NodeStatus.LEFT
        assert swarm.live_pids() == [again.pid]
        raise Escape(swarm.all_pids())


@pytest.mark.slow
async def test_swarm_faults_and_cleanup(tmp_path: Path) -> None:
    with pytest.raises(Escape) as escaped:
        await exercise_faults(tmp_path)
    assert len(escaped.value.pids) == 3
    assert alive(escaped.value.pids) == []
