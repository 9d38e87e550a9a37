"""The swarm-aware SDK and CLI against real node processes gossiping over libp2p."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swarm import AsyncClient
from swarm.simnet._testing import start_swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


async def wait_view(client: AsyncClient, n: int) -> None:
    await client.start()
    await wait_until(lambda: len(client.router.view) >= n, timeout=20,
                     what=lambda: f"{n} providers in the view (saw {len(client.router.view)})")


async def test_a_node_killed_mid_load_costs_zero_failed_requests(tmp_path: Path) -> None:
    async with start_swarm(3, log_dir=tmp_path) as swarm:
        bootstrap = [a for h in swarm.nodes if h is not None for a in h.p2p]
        client = AsyncClient(bootstrap=bootstrap, timeout=15)
        try:
            await wait_view(client, 3)
            inputs = [np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)
                      for i in range(400)]
            done = 0

            def progress(n: int) -> None:
                nonlocal done
                done += n

            run = asyncio.create_task(client.map("builtin/mlp", inputs, concurrency=8,
                                                 progress=progress))
            await wait_until(lambda: done >= 100, timeout=30, what="well into the load")
            await swarm.kill(1)  # SIGKILL: no drain, no goodbye advert
            results = await run  # raises if any request failed
            assert len(results) == 400
            assert all(r.shape == (1, 512) for r in results)  # type: ignore[union-attr]
        finally:
            await client.close()


def swarm_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarm.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


async def test_cli_routes_a_file_and_refuses_an_impossible_price(tmp_path: Path) -> None:
    async with start_swarm(2, prices=[5, 8], log_dir=tmp_path) as swarm:
        addr = swarm.nodes[0].p2p[0]  # type: ignore[union-attr]
        lines = tmp_path / "inputs.jsonl"
        rng = np.random.default_rng(0)
        lines.write_text("".join(json.dumps(rng.standard_normal(512).round(4).tolist()) + "\n"
                                 for _ in range(25)))
        out = await asyncio.to_thread(swarm_cli, "infer", "--bootstrap", addr, "builtin/mlp",
                                      "--file", str(lines), "--concurrency", "4")
        assert out.returncode == 0, out.stderr
        rows = [json.loads(x) for x in out.stdout.splitlines()]
        assert len(rows) == 25
        assert all(len(r["output"][0]) == 512 for r in rows)
        cheap = await asyncio.to_thread(swarm_cli, "infer", "--bootstrap", addr, "builtin/mlp",
                                        "--json", json.dumps([[0.0] * 512]), "--max-price", "1")
        assert cheap.returncode == 1
        assert "max_price 1 (cheapest 5)" in cheap.stderr
        peers = await asyncio.to_thread(swarm_cli, "peers", "--bootstrap", addr, "--json")
        assert peers.returncode == 0, peers.stderr
        listed = json.loads(peers.stdout)
        assert sorted(p["price"]["per_request_micros"] for p in listed) == [5, 8]
        table = await asyncio.to_thread(swarm_cli, "peers", "--bootstrap", addr)
        assert table.returncode == 0, table.stderr
        for p in listed:
            assert p["peer_id"][-12:] in table.stdout
            assert f"builtin/mlp {p['models'][0]['digest'][7:19]}" in table.stdout
        assert "µ/request" in table.stdout
