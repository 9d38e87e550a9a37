"""WireGuard mesh benchmark (issue 12): bring-up time and the tunnel's cost to inference.

    .venv/bin/python bench/mesh_bench.py                 # bring-up 2, 5, 10 + inference
    .venv/bin/python bench/mesh_bench.py --sizes 2 5 --no-inference

Root only (network namespaces, WireGuard interfaces; wireguard-go and wireguard-tools).

1. Bring-up: N namespaces on a bridge (simnet's --netns plumbing), one MeshAgent per
   namespace in its own process (the agent `swarm-node --mesh` runs). Membership comes
   from files here (each agent writes its MeshMember, all read them), not from gossip,
   so this times the mesh itself: from launching the N processes (Python start-up
   included) until every pair has completed a WireGuard handshake, and from the last
   agent's interface being up until then. Through gossip add up to one advert interval.
2. Inference between two namespaces: node 0 (a gateway, --mesh) and node 1 (builtin/mlp,
   --mesh); a load process inside node 0's namespace calls node 1 directly, alternating
   rounds: on its underlay address (plaintext gRPC over the bridge), on its TLS port
   (identity-pinned TLS, as peers dial) and on its overlay address's TLS port (what mesh
   members dial: TLS inside WireGuard). c=1 p50 and c=64 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AGENT = r"""
import asyncio, base64, json, sys, time
from pathlib import Path
import immutables
from swarm.protocol import Advert, Identity, MeshAgent, MeshMember, MeshOptions, PeerView
from swarm.protocol._view import PeerEntry
from swarm._types import PeerId

async def main():
    shared, me, endpoint, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = shared / me
    data.mkdir()
    agent = MeshAgent(MeshOptions(prefix="fd5a:7761:726d::/48", listen_port=51820,
                                  endpoint=endpoint, behind_nat=False, relay=False), data)
    await agent.start()
    agent.grpc_port = 1
    ident = Identity.generate()
    m = agent.member
    (shared / f"{me}.tmp").write_text(json.dumps({
        "peer": str(ident.peer_id), "key": base64.b64encode(m.public_key).decode(),
        "endpoint": m.endpoint, "address": m.address, "up": time.time(),
        "interface": agent.interface}))
    (shared / f"{me}.tmp").replace(shared / f"{me}.json")
    seen = -1
    try:
        while True:
            files = sorted(shared.glob("*.json"))
            if len(files) != seen:
                seen = len(files)
                entries = immutables.Map()
                for f in files:
                    d = json.loads(f.read_text())
                    if d["peer"] == str(ident.peer_id):
                        continue
                    member = MeshMember(base64.b64decode(d["key"]), d["endpoint"], d["address"], 1)
                    advert = Advert(peer_id=PeerId(d["peer"]), endpoints=(), models=(),
                                    sequence=1, timestamp=0, ttl=60, mesh=member)
                    entries = entries.set(advert.peer_id, PeerEntry(advert, 0.0))
                await agent.reconcile(PeerView(entries=entries))
            await agent.poke_pending()
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        pass
    finally:
        await agent.close()

loop = asyncio.new_event_loop()
task = loop.create_task(main())
import signal
loop.add_signal_handler(signal.SIGTERM, task.cancel)
loop.run_until_complete(task)
"""

LOAD = r"""
import asyncio, contextlib, json, sys, time
import numpy as np, grpc
from swarm._proto.inference import grpc_service_pb2 as pb

async def main(address, concurrency, duration, peer):
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="builtin/mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 512])
    req.raw_input_contents.append(x.tobytes())
    payload = req.SerializeToString()
    # With a peer id: identity-pinned TLS, as the router dials (swarm.protocol.PeerChannels).
    from swarm.protocol import PeerChannels
    from swarm._types import PeerId
    channels = PeerChannels() if peer else None
    channel = (await channels.channel(PeerId(peer), address) if channels
               else grpc.aio.insecure_channel(address))
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(channels.close if channels else channel.close)
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(20):
            await call(payload, timeout=30)
        latencies, stop = [], time.perf_counter() + duration
        async def worker():
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await call(payload, timeout=30)
                latencies.append(time.perf_counter() - t)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps({"rps": len(latencies) / duration,
                      "p50_ms": 1000 * float(np.percentile(latencies, 50))}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
"""


def _infos(shared: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in shared.glob("*.json")]


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv)


def _load(argv: list[str]) -> dict[str, float]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    row: dict[str, float] = json.loads(out)
    return row


def handshaken(interface: str, peers: int) -> bool:
    out = subprocess.run(["wg", "show", interface, "latest-handshakes"], capture_output=True,
                         text=True).stdout.split()
    return len(out) == 2 * peers and all(v != "0" for v in out[1::2])


async def bring_up(n: int) -> dict[str, float]:
    from swarm.simnet._netns import netns_network
    from swarm.simnet._scenario import Network

    async with netns_network(n, Network()) as net:
        with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
            shared = Path(tmp)
            started = time.perf_counter()
            wall = time.time()
            procs = [_spawn(net.wrap(i, [sys.executable, "-c", AGENT, str(shared), f"n{i}",
                                         f"{net.host(i)}:51820", str(n)])) for i in range(n)]
            try:
                deadline = started + 120
                while len(_infos(shared)) < n:
                    if time.perf_counter() > deadline or any(p.poll() is not None for p in procs):
                        raise RuntimeError("agents did not come up")
                    await asyncio.sleep(0.01)
                infos = _infos(shared)
                while not all(handshaken(i["interface"], n - 1) for i in infos):
                    if time.perf_counter() > deadline:
                        raise RuntimeError("pairs did not handshake within 120 s")
                    await asyncio.sleep(0.01)
                done = time.perf_counter()
                last_up = max(i["up"] for i in infos) - wall
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in procs:
                    await asyncio.to_thread(p.wait)
    total = done - started
    return {"nodes": n, "total_s": total, "after_last_up_s": total - last_up}


async def inference(duration: float, rounds: int) -> dict[str, Any]:
    from swarm.simnet._cluster import ClusterConfig, start_cluster
    from swarm.simnet._netns import netns_network
    from swarm.simnet._scenario import Network, NodeSpec

    specs = [NodeSpec(index=0, models=()), NodeSpec(index=1, models=("builtin/mlp",))]
    results: dict[str, dict[str, list[float]]] = {
        name: {"c1_p50_ms": [], "c64_rps": []} for name in ("plaintext", "tls", "mesh+tls")}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        config = ClusterConfig(log_dir=Path(tmp) / "logs", advert_interval=1.0, mesh=True)
        async with netns_network(2, Network()) as net, \
                start_cluster(specs, config, network=net) as cluster:
            node = cluster.nodes[1]
            assert node is not None
            state = json.loads((node.data_dir / "mesh.json").read_text())
            tls_port = node.tls.rsplit(":", 1)[1]
            # Peers dial the TLS port; on the overlay address that is TLS inside WireGuard.
            targets = {"plaintext": (node.grpc, ""), "tls": (node.tls, node.peer_id),
                       "mesh+tls": (f"[{state['address']}]:{tls_port}", node.peer_id)}
            for _ in range(rounds):
                for name, (address, peer) in targets.items():
                    for concurrency, key in ((1, "c1_p50_ms"), (64, "c64_rps")):
                        row = _load(net.wrap(0, [sys.executable, "-c", LOAD, address,
                                                 str(concurrency), str(duration), peer]))
                        results[name][key].append(row["p50_ms" if concurrency == 1 else "rps"])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2, 5, 10])
    parser.add_argument("--repeat", type=int, default=3, help="bring-ups per size")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating load rounds")
    parser.add_argument("--no-inference", dest="inference", action="store_false")
    args = parser.parse_args()
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in ("wg", "wireguard-go", "ip")):
        print("mesh_bench: needs root, wireguard-tools, wireguard-go and iproute2",
              file=sys.stderr)
        return 2
    print("| nodes | all pairs handshaken, from launch (s) | from the last agent up (s) |")
    print("|---:|---|---|")
    for n in args.sizes:
        rows = [asyncio.run(bring_up(n)) for _ in range(args.repeat)]
        totals = ", ".join(f"{r['total_s']:.2f}" for r in rows)
        after = ", ".join(f"{r['after_last_up_s']:.2f}" for r in rows)
        print(f"| {n} | {totals} | {after} |", flush=True)
    if args.inference:
        results = asyncio.run(inference(args.duration, args.rounds))
        print("\n| path | c=1 p50 ms (rounds) | median | c=64 req/s (rounds) | median |")
        print("|---|---|---:|---|---:|")
        for name, row in results.items():
            p50, rps = row["c1_p50_ms"], row["c64_rps"]
            print(f"| {name} | {', '.join(f'{v:.2f}' for v in p50)} | "
                  f"{statistics.median(p50):.2f} | {', '.join(f'{v:.0f}' for v in rps)} | "
                  f"{statistics.median(rps):.0f} |")
        plain = statistics.median(results["plaintext"]["c64_rps"])
        for name in ("tls", "mesh+tls"):
            ratio = statistics.median(results[name]["c64_rps"]) / plain
            print(f"{name} / plaintext c=64 req/s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
