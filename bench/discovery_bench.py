"""Discovery: convergence time and gossip bytes per node per second against swarm size.

    .venv/bin/python bench/discovery_bench.py [--libp2p 5,10,20] [--memory 100,300,1000]

libp2p   N real processes on loopback, each a libp2p host + Membership publishing
         signed adverts every --interval s (no models: the protocol layer alone);
         node 0 starts first, the others bootstrap to it. Convergence = time from
         the launch until every node's view holds the N-1 others. Bytes: what the
         loopback interface carried (tx, all protocol overhead included) over a
         --steady window once every node has converged, per node per second.
memory   N Membership instances on one in-memory gossip network (degree 6, lognormal
         20 ms per hop) in virtual time; the same adverts, validators and views.
         Bytes: payload bytes each host sent + received (HostStats), per node per s.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm._types import Digest  # noqa: E402
from swarm.protocol import (  # noqa: E402
    Advert,
    Hardware,
    Identity,
    Membership,
    MembershipConfig,
    ModelOffer,
    Price,
)

MODEL = Digest.of(b"bench-model")


def advert_source(identity: Identity, endpoint: str) -> Advert:
    return Advert(identity.peer_id, (endpoint,),
                  (ModelOffer(MODEL, "builtin/mlp", max_batch_size=256, items_per_second=2000.0),),
                  sequence=0, timestamp=0.0, ttl=0.0, queue_depth=0,
                  hardware=Hardware("cpu", 2, 24 << 30, "cpu"), price=Price(10, 0),
                  region="local", software_version="bench")


# --------------------------------------------------------------------------- libp2p worker

async def worker(index: int, n: int, port: int, bootstrap: str, interval: float) -> None:
    from swarm.protocol import Libp2pConfig, Libp2pGossip

    identity = Identity.from_seed(hashlib.sha256(f"discovery-bench:{index}".encode()).digest())
    gossip = await Libp2pGossip.start(identity, Libp2pConfig(
        port=port, bootstrap=(bootstrap,) if bootstrap else ()))
    print(json.dumps({"event": "listening", "t": time.time()}), flush=True)
    membership = Membership(gossip, identity=identity,
                            source=lambda: dataclasses.replace(
                                advert_source(identity, f"127.0.0.1:{port}"),
                                p2p_addrs=tuple(gossip.listen_addrs)),
                            config=MembershipConfig(advert_interval=interval))
    task = asyncio.create_task(membership.run())
    converged = await membership.wait_until(lambda v: len(v) >= n - 1, timeout=120)
    print(json.dumps({"event": "converged" if converged else "timeout", "t": time.time(),
                      "view": len(membership.view)}), flush=True)
    # Keep advertising until the harness has measured the steady state (stdin closes).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await gossip.close()


def _loopback_tx() -> int:
    return int(Path("/sys/class/net/lo/statistics/tx_bytes").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_libp2p(n: int, interval: float, steady: float) -> dict[str, float]:
    port0 = free_port()
    first = Identity.from_seed(hashlib.sha256(b"discovery-bench:0").digest())
    bootstrap = f"/ip4/127.0.0.1/tcp/{port0}/p2p/{first.peer_id}"
    launched = time.time()
    procs = []
    for i in range(n):
        port = port0 if i == 0 else free_port()
        cmd = [sys.executable, __file__, "--worker", str(i), "--n", str(n), "--port", str(port),
               "--bootstrap", "" if i == 0 else bootstrap, "--interval", str(interval)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, stderr=subprocess.DEVNULL))
    events: list[dict[str, dict[str, float]]] = []
    try:
        for p in procs:
            assert p.stdout is not None
            got: dict[str, dict[str, float]] = {}
            for line in p.stdout:
                e = json.loads(line)
                got[e["event"]] = e
                if e["event"] in ("converged", "timeout"):
                    break
            events.append(got)
        time.sleep(2.0)
        tx0, t0 = _loopback_tx(), time.time()
        time.sleep(steady)
        per_node = (_loopback_tx() - tx0) / (time.time() - t0) / n
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(60)
    listening = max(e["listening"]["t"] for e in events)
    converged = [e.get("converged", e.get("timeout", {})).get("t", float("nan")) for e in events]
    ok = all("converged" in e for e in events)
    return {
        "nodes": n, "converged": float(ok),
        "convergence_from_launch_s": max(converged) - launched,
        "convergence_after_all_listen_s": max(converged) - listening,
        "bytes_per_node_s": per_node,
    }


# --------------------------------------------------------------------------- in-memory

async def memory_swarm(n: int, interval: float, steady: float) -> dict[str, float]:
    from swarm.protocol.testing import MemoryNetwork, lognormal_delay
    from swarm.simnet._vloop import VirtualClock

    loop = asyncio.get_running_loop()
    clock = VirtualClock.current()
    net = MemoryNetwork(seed=n)
    net.set_route(lognormal_delay(0.020, 0.5))
    members = []
    tasks = []
    start = loop.time()
    wall0 = time.perf_counter()
    rng = random.Random(n)
    for i in range(n):
        identity = Identity.from_seed(hashlib.sha256(f"mem:{n}:{i}".encode()).digest())
        host = net.join(identity.peer_id)
        m = Membership(host, identity=identity,
                       source=(lambda ident=identity, k=i: advert_source(ident, f"10.0.0.{k}:7070")),
                       clock=clock, rng=random.Random(rng.random()),
                       config=MembershipConfig(advert_interval=interval))
        members.append((m, host))
        tasks.append(asyncio.create_task(m.run()))
    while not all(len(m.view) >= n - 1 for m, _ in members):
        await asyncio.sleep(0.05)
        if loop.time() - start > 120:
            break
    converged = loop.time() - start
    wall_converge = time.perf_counter() - wall0
    before = [h.stats() for _, h in members]
    t0 = loop.time()
    await asyncio.sleep(steady)
    after = [h.stats() for _, h in members]
    span = loop.time() - t0
    per_node = sum((a.bytes_sent + a.bytes_received) - (b.bytes_sent + b.bytes_received)
                   for a, b in zip(after, before, strict=True)) / n / span
    msgs = sum(a.messages_received - b.messages_received
               for a, b in zip(after, before, strict=True)) / n / span
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"nodes": n, "converged": float(all(len(m.view) >= n - 1 for m, _ in members)),
            "convergence_virtual_s": converged, "wall_s": time.perf_counter() - wall0,
            "wall_to_converge_s": wall_converge, "bytes_per_node_s": per_node,
            "messages_per_node_s": msgs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--libp2p", default="5,10,20", help="node counts, comma-separated")
    parser.add_argument("--memory", default="100,300,1000", help="node counts, comma-separated")
    parser.add_argument("--interval", type=float, default=5.0, help="advert interval, seconds")
    parser.add_argument("--steady", type=float, default=20.0,
                        help="seconds of steady state to measure bytes over")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        asyncio.run(worker(args.worker, args.n, args.port, args.bootstrap, args.interval))
        return 0
    from swarm.simnet._vloop import run_virtual

    print(f"advert interval {args.interval:g} s; cpu cores {os.cpu_count()}\n", flush=True)
    if args.libp2p:
        print("| libp2p nodes | converged | from launch s | after all listen s "
              "| loopback bytes/node/s |")
        print("|---:|---|---:|---:|---:|", flush=True)
        for n in (int(x) for x in args.libp2p.split(",")):
            r = run_libp2p(n, args.interval, args.steady)
            print(f"| {n} | {'yes' if r['converged'] else 'NO'} | "
                  f"{r['convergence_from_launch_s']:.2f} | "
                  f"{r['convergence_after_all_listen_s']:.2f} | {r['bytes_per_node_s']:.0f} |",
                  flush=True)
    if args.memory:
        print("\n| in-memory nodes | converged | virtual s to converge | wall s to converge "
              "| payload bytes/node/s | msgs/node/s | wall s total |")
        print("|---:|---|---:|---:|---:|---:|---:|", flush=True)
        for n in (int(x) for x in args.memory.split(",")):
            r = run_virtual(memory_swarm(n, args.interval, args.steady))
            print(f"| {n} | {'yes' if r['converged'] else 'NO'} | "
                  f"{r['convergence_virtual_s']:.2f} | {r['wall_to_converge_s']:.1f} | "
                  f"{r['bytes_per_node_s']:.0f} | {r['messages_per_node_s']:.1f} | "
                  f"{r['wall_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
