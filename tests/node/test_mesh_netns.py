"""The WireGuard mesh with real nodes: three network namespaces on a bridge, `swarm-node run
--mesh` in each (simnet's --netns plumbing and cluster).

What crosses the bridge between the nodes for inference is WireGuard UDP only (iptables
counters on each provider's link), every node reaches every other's gRPC on its overlay
address, a node that leaves is removed from the others' interfaces, and nothing is left
behind: no namespace, interface, UAPI socket, route or wireguard-go.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import swarm
from swarm.protocol._wireguard import UAPI_DIR
from swarm.simnet._cluster import ClusterConfig, NodeHandle, start_cluster
from swarm.simnet._netns import netns_network
from swarm.simnet._scenario import Network, NodeSpec
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the mesh needs root (network namespaces, "
                                                 "WireGuard interfaces)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("ip", "wg", "wireguard-go",
                                                             "iptables")),
                       reason="needs iproute2, wireguard-tools, wireguard-go and iptables "
                              "(scripts/setup installs them as root)"),
]

LIVE = """
import sys, grpc
from swarm._proto.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
for target in sys.argv[1:]:
    with grpc.insecure_channel(target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
"""


def mesh_state(node: NodeHandle) -> dict[str, object]:
    state: dict[str, object] = json.loads((node.data_dir / "mesh.json").read_text())
    return state


def wg_peers(interface: str) -> set[str]:
    """Public keys (base64) configured on `interface` (wireguard-go's socket is reachable
    from every namespace)."""
    out = subprocess.run(["wg", "show", interface, "peers"], capture_output=True, text=True)
    return set(out.stdout.split()) if out.returncode == 0 else set()


def counters(namespace: str) -> dict[str, int]:
    """Packets counted by our marker rules in INPUT, by comment."""
    out = subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-L", "INPUT", "-v",
                          "-x", "-n"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        if "/* mesh-" in line:
            found[line.split("/* ")[1].split(" */")[0]] = int(line.split()[0])
    return found


def count(namespace: str, name: str, *match: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-I", "INPUT", "-i", "eth0",
                    *match, "-m", "comment", "--comment", name], check=True)


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def leftovers(interfaces: list[str], pids: list[int], namespace: str | None = None) -> list[str]:
    found = [f"socket {UAPI_DIR / f'{i}.sock'}" for i in interfaces
             if (UAPI_DIR / f"{i}.sock").exists()]
    found += [f"wireguard-go pid {p}" for p in pids if Path(f"/proc/{p}").exists()]
    where = ["-n", namespace] if namespace else []
    links = subprocess.run(["ip", *where, "-o", "link"], capture_output=True, text=True).stdout
    found += [f"interface {i}" for i in interfaces if i in links]
    routes = subprocess.run(["ip", *where, "-6", "route"], capture_output=True,
                            text=True).stdout
    found += [f"route {line}" for line in routes.splitlines() if "fd5a:7761:726d" in line]
    return found


async def test_three_namespaces_mesh_inference_leave_and_teardown(tmp_path: Path) -> None:
    specs = [NodeSpec(index=0, models=()), NodeSpec(index=1, models=("builtin/mlp",)),
             NodeSpec(index=2, models=("builtin/mlp",))]
    config = ClusterConfig(log_dir=tmp_path / "logs", advert_interval=1.0, mesh=True,
                           torch_threads=1, start_timeout=90)
    interfaces: list[str] = []
    pids: list[int] = []
    async with netns_network(3, Network()) as net, \
            start_cluster(specs, config, network=net) as cluster:
        nodes = [n for n in cluster.nodes if n is not None]
        states = [mesh_state(n) for n in nodes]
        interfaces = [str(s["interface"]) for s in states]
        pids = [int(str(s["wireguard_go_pid"])) for s in states]
        keys = [str(s["public_key"]) for s in states]
        overlay = [f"[{s['address']}]:{n.grpc.rsplit(':', 1)[1]}"
                   for s, n in zip(states, nodes, strict=True)]
        for i in (1, 2):
            port = nodes[i].grpc.rsplit(":", 1)[1]
            count(net.namespace(i), "mesh-grpc-tcp", "-p", "tcp", "--dport", port)
            count(net.namespace(i), "mesh-wg-udp", "-p", "udp", "--dport", "51820")

        # Every member has every other as a WireGuard peer (adverts every second).
        for i, interface in enumerate(interfaces):
            others = set(keys) - {keys[i]}
            await wait_until(lambda interface=interface, others=others:
                             wg_peers(interface) == others, timeout=20,
                             what=f"node {i}'s peers on {interface}")

        # Each node reaches every other's gRPC on its overlay address.
        for i in range(3):
            targets = [overlay[j] for j in range(3) if j != i]
            process = await asyncio.create_subprocess_exec(
                *net.wrap(i, [sys.executable, "-c", LIVE, *targets]),
                stderr=asyncio.subprocess.PIPE)
            _, err = await process.communicate()
            assert process.returncode == 0, f"node {i} -> {targets}: {err.decode()[-800:]}"

        # Node 0 serves nothing: it forwards to the providers, over the overlay.
        x = np.ones((2, 512), np.float32)
        async with swarm.AsyncClient(nodes[0].grpc, timeout=10) as client:
            async def served() -> bool:
                try:
                    await client.infer("builtin/mlp", x)
                except swarm.SwarmError:
                    return False
                return True

            await wait_until(served, timeout=20, what="node 0 forwarding builtin/mlp")
            for _ in range(20):
                assert (await client.infer("builtin/mlp", x)).shape == (2, 512)
        seen = [counters(net.namespace(i)) for i in (1, 2)]
        assert all(c["mesh-grpc-tcp"] == 0 for c in seen), seen  # no plaintext gRPC on the link
        assert sum(c["mesh-wg-udp"] for c in seen) > 20, seen

        # A node that leaves is removed from the others' interfaces, its own interface gone.
        await cluster.leave(2)
        for i in (0, 1):
            await wait_until(lambda i=i: keys[2] not in wg_peers(interfaces[i]), timeout=20,
                             what=f"node 2 gone from node {i}'s interface")
        assert leftovers(interfaces[2:], pids[2:], net.namespace(2)) == []
    assert leftovers(interfaces, pids) == []
    assert net.run not in namespaces()
