"""The WireGuard mesh with real nodes: network namespaces on a bridge, `swarm-node run
--mesh` in each (simnet's --netns plumbing and cluster), one cluster for every check
(starting nodes is what costs):

    node 0  public, relay, serves nothing (a gateway)
    node 1  public, builtin/mlp
    node 2  behind a MASQUERADE router, builtin/mlp
    node 3  behind another MASQUERADE router, serves nothing

Every node has a WireGuard peer for every member it can reach directly within seconds
and reaches every other's gRPC on its overlay address (2 <-> 3 through the relay); what
crosses the providers' links for forwarded inference is WireGuard UDP only (iptables
counters); a node that leaves is removed from the others' interfaces; nothing is left
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

import aiohttp
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

# Reach each TARGET=PEERID over TLS and check that the certificate proves that peer:
# what the router does before it sends a request over the mesh.
LIVE = """
import asyncio, sys
from swarm.protocol._tls import fetch_certificate, peer_of_certificate
async def main():
    for arg in sys.argv[1:]:
        target, peer = arg.rsplit("=", 1)
        proven = peer_of_certificate(await fetch_certificate(target, timeout=20)).value
        assert proven == peer, (target, proven, peer)
asyncio.run(main())
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


def wg_endpoints(interface: str) -> str:
    return subprocess.run(["wg", "show", interface, "endpoints"], capture_output=True,
                          text=True, check=True).stdout


def handshaken(interface: str) -> bool:
    """Every peer of `interface` has completed a handshake."""
    out = subprocess.run(["wg", "show", interface, "latest-handshakes"], capture_output=True,
                         text=True).stdout
    return bool(out) and all(line.split()[1] != "0" for line in out.splitlines())


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


async def test_mesh_nat_relay_inference_leave_and_teardown(tmp_path: Path) -> None:
    specs = [NodeSpec(index=0, models=()), NodeSpec(index=1, models=("builtin/mlp",)),
             NodeSpec(index=2, models=("builtin/mlp",)), NodeSpec(index=3, models=())]
    config = ClusterConfig(log_dir=tmp_path / "logs", advert_interval=1.0, mesh=True,
                           torch_threads=1, start_timeout=120,
                           node_args={0: ("--mesh-relay",), 2: ("--mesh-behind-nat",),
                                      3: ("--mesh-behind-nat",)})
    interfaces: list[str] = []
    pids: list[int] = []
    async with netns_network(4, Network(), nat=frozenset({2, 3})) as net, \
            start_cluster(specs, config, network=net) as cluster:
        nodes = [n for n in cluster.nodes if n is not None]
        states = [mesh_state(n) for n in nodes]
        interfaces = [str(s["interface"]) for s in states]
        pids = [int(str(s["wireguard_go_pid"])) for s in states]
        keys = [str(s["public_key"]) for s in states]
        # Peers dial each other's TLS port on the overlay address (mesh + TLS).
        overlay = [f"[{s['address']}]:{n.tls.rsplit(':', 1)[1]}={n.peer_id}"
                   for s, n in zip(states, nodes, strict=True)]

        # Peers within seconds (adverts every second); the NATed nodes reach each other
        # through the relay, so they have the public members only.
        expect = {0: {1, 2, 3}, 1: {0, 2, 3}, 2: {0, 1}, 3: {0, 1}}
        for i, interface in enumerate(interfaces):
            others = {keys[j] for j in expect[i]}
            await wait_until(lambda interface=interface, others=others:
                             wg_peers(interface) == others, timeout=30,
                             what=f"node {i}'s peers on {interface}")
        # A NATed member's first handshake may reach a member that has not seen its advert
        # yet; WireGuard retries after 5 s.
        for i, interface in enumerate(interfaces):
            await wait_until(lambda interface=interface: handshaken(interface), timeout=30,
                             what=f"handshakes with node {i}'s peers")

        # Each node reaches every other's TLS gRPC on its overlay address, proving its peer.
        for i in range(4):
            targets = [overlay[j] for j in range(4) if j != i]
            process = await asyncio.create_subprocess_exec(
                *net.wrap(i, [sys.executable, "-c", LIVE, *targets]),
                stderr=asyncio.subprocess.PIPE)
            _, err = await process.communicate()
            assert process.returncode == 0, f"node {i} -> {targets}: {err.decode()[-800:]}"
        # The public members learned where the NATed ones dial from: their routers.
        assert f"{keys[2]}\t{net.public_host(2)}:" in wg_endpoints(interfaces[1])

        # Node 0 serves nothing: it forwards to the providers (one behind NAT) over the mesh.
        x = np.ones((2, 512), np.float32)
        async with swarm.AsyncClient(nodes[0].grpc, timeout=10) as client:
            async def served() -> bool:
                try:
                    await client.infer("builtin/mlp", x)
                except swarm.SwarmError:
                    return False
                return True

            await wait_until(served, timeout=20, what="node 0 forwarding builtin/mlp")
            # Count what reaches the providers' links while the forwarded requests run.
            for i in (1, 2):
                for name, address in (("mesh-grpc-tcp", nodes[i].grpc),
                                      ("mesh-tls-tcp", nodes[i].tls)):
                    count(net.namespace(i), name, "-p", "tcp", "--dport",
                          address.rsplit(":", 1)[1])
                count(net.namespace(i), "mesh-wg-udp", "-p", "udp")
            for _ in range(20):
                assert (await client.infer("builtin/mlp", x)).shape == (2, 512)
        async with aiohttp.ClientSession() as http, http.get(nodes[0].metrics) as response:
            metrics = await response.text()
        assert 'swarm_mesh_events_total{event="peers_added"} 3.0' in metrics, metrics[-2000:]
        seen = [counters(net.namespace(i)) for i in (1, 2)]
        # No gRPC, plaintext or TLS, on the link itself: only WireGuard UDP.
        assert all(c["mesh-grpc-tcp"] == 0 for c in seen), seen
        assert all(c["mesh-tls-tcp"] == 0 for c in seen), seen
        assert sum(c["mesh-wg-udp"] for c in seen) > 5, seen  # the 20 requests and answers

        # A node that leaves is removed from the others' interfaces, its own interface gone.
        await cluster.leave(1)
        for i in (0, 2, 3):
            await wait_until(lambda i=i: keys[1] not in wg_peers(interfaces[i]), timeout=20,
                             what=f"node 1 gone from node {i}'s interface")
        assert leftovers(interfaces[1:2], pids[1:2], net.namespace(1)) == []
    assert leftovers(interfaces, pids) == []
    assert net.run not in namespaces()
