"""A joining peer sees the whole swarm at once (issue 11 item 12, issue 17 item 4).

Adverts come every 5 s; a peer that joins pulls a snapshot of the signed adverts (and
tag records) from the peers it connects to, so its first view is complete instead of
whatever gossip brought in its first second. Real node processes over libp2p.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm import AsyncClient
from swarm.protocol import LightPeer
from swarm.simnet._testing import start_swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

CALLS = 5


def swarm_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarm.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


async def test_every_fresh_peer_sees_all_ten_providers_on_its_first_look(tmp_path: Path) -> None:
    # The nodes' own advert interval (5 s): a joiner cannot wait for the next round.
    async with start_swarm(10, advert_interval=5.0, log_dir=tmp_path) as swarm:
        handles = [h for h in swarm.nodes if h is not None]
        everyone = {h.peer_id for h in handles}
        addr = handles[0].p2p[0]
        # Ground truth: a listener that hears every provider's advert at least once.
        async with LightPeer.libp2p([addr]) as oracle:
            await wait_until(lambda: {e.peer_id.value for e in oracle.view} == everyone,
                             timeout=30, what=lambda: f"the oracle to hear all 10 "
                                                      f"(has {len(oracle.view)})")
        sizes, seconds = [], []
        for _ in range(CALLS):
            started = time.monotonic()
            # --wait only bounds the try (CI machines are loaded): it returns once synced.
            out = await asyncio.to_thread(swarm_cli, "peers", "--bootstrap", addr, "--json",
                                          "--wait", "30")
            seconds.append(time.monotonic() - started)
            assert out.returncode == 0, out.stderr
            listed = {p["peer_id"] for p in json.loads(out.stdout)}
            sizes.append(len(listed))
            assert listed == everyone, (f"call {len(sizes)} listed {len(listed)} of 10 in "
                                        f"{seconds[-1]:.1f} s; stderr: {out.stderr}")
        print(f"swarm peers: sizes {sizes}, seconds {[round(s, 2) for s in seconds]}")
        joins, views = [], []
        for i in range(CALLS):
            client = AsyncClient(bootstrap=[handles[i % len(handles)].p2p[0]])
            try:
                started = time.monotonic()
                await client.start()  # joins; the view it routes on before any request
                joins.append(time.monotonic() - started)
                views.append(len(client.router.view))
                assert {e.peer_id.value for e in client.router.view} == everyone
            finally:
                await client.close()
        print(f"client joins: views {views}, seconds {[round(s, 3) for s in joins]}")


async def test_a_pinned_version_is_served_on_the_first_call(tmp_path: Path) -> None:
    async with start_swarm(3, advert_interval=5.0, log_dir=tmp_path) as swarm:
        handles = [h for h in swarm.nodes if h is not None]
        addr = handles[0].p2p[0]
        digest = dict(handles[0].models)["builtin/mlp"]
        async with LightPeer.libp2p([addr]) as oracle:
            await wait_until(lambda: len(oracle.view) == 3, timeout=30,
                             what="the oracle to hear all 3")
        vector = json.dumps([[0.0] * 512])
        for _ in range(3):
            started = time.monotonic()
            out = await asyncio.to_thread(swarm_cli, "infer", "--bootstrap", addr,
                                          f"builtin/mlp@{digest}", "--json", vector)
            took = time.monotonic() - started
            assert out.returncode == 0, out.stderr
            print(f"pinned infer took {took:.2f} s")
        # A name nobody serves fails at once (the snapshot is the swarm's state), and says
        # what the swarm does serve.
        started = time.monotonic()
        out = await asyncio.to_thread(swarm_cli, "infer", "--bootstrap", addr,
                                      "acme/nothing", "--json", vector)
        took = time.monotonic() - started
        assert out.returncode == 1
        assert "builtin/mlp" in out.stderr, out.stderr
        assert took < 8, f"an unknown name took {took:.1f} s to fail"
        print(f"unknown name failed in {took:.2f} s: {out.stderr.strip()}")
