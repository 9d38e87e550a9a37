"""Ledger transactions applied per node through the gossip path (the node's LedgerAgent).

    .venv/bin/python bench/ledger_gossip_bench.py                  # 3 nodes, 5,000 tx
    .venv/bin/python bench/ledger_gossip_bench.py --nodes 4 --count 20000

`--nodes` LedgerAgents (each with its own SQLite store in a temporary folder) on one
in-memory gossip network (swarm.protocol.testing.MemoryNetwork, one process, one event
loop: the nodes share the CPU, so a node's rate is the rate of all of them together).
Node 0 submits the workload of bench/ledger_bench.py (transfers, bonds, unbonds, deposits
with causal acks, and ticks), pre-signed, keeping at most `--window` transactions ahead of
the slowest receiver; the others take them through the production path: the topic
validator (size, per-forwarder rate, decode, Ed25519 verify, chain), then
`LedgerAgent.receive` (buffer, settle, log to SQLite). Prints per receiving node the
transactions applied per second from the first submit to its last apply, and checks that
every node ends with the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger_bench import make_genesis, signed_stream

from swarm._types import PeerId
from swarm.node._ledger import LedgerAgent, LedgerAgentConfig
from swarm.protocol.testing import MemoryNetwork


async def bench(args: argparse.Namespace) -> None:
    genesis = make_genesis(args.accounts)
    t0 = time.perf_counter()
    wires = list(signed_stream(genesis, args.accounts, args.count, 1, args.workers))
    print(f"signed {len(wires)} transactions in {time.perf_counter() - t0:.1f} s")
    network = MemoryNetwork(seed=1)
    config = LedgerAgentConfig(rate_per_second=1e9, rate_burst=1e9, sync_interval=3600)
    with tempfile.TemporaryDirectory() as folder:
        agents = []
        for i in range(args.nodes):
            gossip = network.join(_peer(i))
            agent = LedgerAgent(genesis, Path(folder) / f"n{i}.sqlite", gossip=gossip,
                                config=config)
            agents.append(agent)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a.run()) for a in agents]
            await asyncio.sleep(0.1)
            receivers = agents[1:]
            done_at: dict[int, float] = {}
            started = time.perf_counter()
            for sent, wire in enumerate(wires, 1):
                await agents[0].submit(wire)
                lag = sent - min(len(a.ledger.log) for a in receivers)
                while lag > args.window:
                    await asyncio.sleep(0.001)
                    lag = sent - min(len(a.ledger.log) for a in receivers)
            target = len(agents[0].ledger.log)
            while len(done_at) < len(receivers):
                for i, a in enumerate(receivers):
                    if i not in done_at and len(a.ledger.log) >= target:
                        done_at[i] = time.perf_counter()
                await asyncio.sleep(0.001)
                if time.perf_counter() - started > args.timeout:
                    print("timed out", [len(a.ledger.log) for a in receivers], target)
                    break
            for t in tasks:
                t.cancel()
        for i, a in enumerate(receivers):
            seconds = done_at.get(i, time.perf_counter()) - started
            print(f"node {i + 1}: {len(a.ledger.log)} applied in {seconds:.2f} s = "
                  f"{len(a.ledger.log) / seconds:,.0f} tx/s; counts {dict(a.counters)}")
        same = {a.state.encode() for a in agents}
        print(f"all {args.nodes} nodes hold the same state: {len(same) == 1}")
        for a in agents:
            a.close()


def _peer(i: int) -> PeerId:
    from swarm.protocol import Identity

    return Identity.from_seed(bytes([i + 1]) * 32).peer_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
