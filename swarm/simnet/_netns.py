"""--netns: every node in its own network namespace, so that what crosses the network
really crosses one (root only, Linux, iproute2).

    hub namespace: bridge br0
      ├── veth "tohost" <->  root namespace "snPID" 10.213.S.1/24   (simnet's client side)
      └── veth "nodeI"  <->  node I's namespace "eth0" 10.213.S.(10+I)/24

A node in `nat` sits behind a router namespace "nat<I>" that MASQUERADEs (as a home
router does): the node has a private address 10.214.S.(4I+2)/30 and dials out through
the router, whose address on the bridge is the node's usual one; nodes on the bridge
cannot reach it, simnet's root side can (a route through the router, for its checks).

tc netem on both ends of each node's link adds `latency_ms` (+- `jitter_ms`) and
`loss_percent` per direction, when the kernel has sch_netem. A partition sets the
hub end of the node's link down. Namespaces are named `swarm-sn-<simnet pid>-*`
and deleted on the way out; a later run deletes those left by a simnet that was
killed (its pid no longer exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from swarm._errors import ConfigError, SwarmError
from swarm.simnet._scenario import Network

__all__ = ["NetnsNetwork", "netns_network"]

PREFIX = "swarm-sn-"
MAX_NODES = 240


async def _ip(*args: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if check and process.returncode != 0:
        first = (err.decode().strip().splitlines() or [f"exit code {process.returncode}"])[0]
        raise SwarmError(f"ip {' '.join(args)}: {first}")
    return out.decode()


async def _tc(namespace: str, *args: str) -> tuple[bool, str]:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, "tc", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    return process.returncode == 0, err.decode().strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_namespaces(names: list[str]) -> list[str]:
    """Namespaces of simnet runs whose process is gone."""
    stale = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            stale.append(name)
    return stale


def _subnet(taken: str, pid: int) -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no existing route mentions."""
    for k in range(256):
        net = ipaddress.IPv4Network(f"10.213.{(pid + k) % 256}.0/24")
        if f"10.213.{(pid + k) % 256}." not in taken:
            return net
    raise ConfigError("no free /24 in 10.213.0.0/16 for --netns")


@dataclass(slots=True)
class NetnsNetwork:
    """The NetworkLayer of a --netns run (see swarm.simnet._cluster.NetworkLayer)."""

    run: str
    nodes: int
    subnet: ipaddress.IPv4Network
    notes: list[str]
    # Nodes behind a MASQUERADE router.
    nat: frozenset[int] = frozenset()

    @property
    def hub(self) -> str:
        return f"{self.run}-hub"

    def namespace(self, index: int) -> str:
        return f"{self.run}-{index}"

    def host(self, index: int) -> str:
        if index in self.nat:
            return str(self._private(index) + 2)
        return self.public_host(index)

    def public_host(self, index: int) -> str:
        """The node's address on the bridge (its router's, for a node behind NAT)."""
        return str(self.subnet.network_address + 10 + index)

    def router(self, index: int) -> str:
        return f"{self.run}-nat{index}"

    def _private(self, index: int) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"10.214.{self.subnet.network_address.packed[2]}.{4 * index}")

    def wrap(self, index: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(index), *argv]

    async def partition(self, index: int, isolated: bool) -> None:
        await _ip("-n", self.hub, "link", "set", f"node{index}", "down" if isolated else "up")


async def _netem(namespace: str, device: str, link: Network) -> tuple[bool, str]:
    args = ["qdisc", "replace", "dev", device, "root", "netem"]
    if link.latency_ms or link.jitter_ms:
        args += ["delay", f"{link.latency_ms}ms", f"{link.jitter_ms}ms"]
    if link.loss_percent:
        args += ["loss", f"{link.loss_percent}%"]
    return await _tc(namespace, *args)


async def _behind_nat(net: NetnsNetwork, index: int, host_if: str) -> None:
    """Node `index`'s namespace, with a router namespace between it and the bridge."""
    ns, router = net.namespace(index), net.router(index)
    private = net._private(index)
    await _ip("-n", router, "link", "set", "lo", "up")
    await _ip("-n", net.hub, "link", "add", f"node{index}", "type", "veth", "peer", "name",
              "eth0", "netns", router)
    await _ip("-n", net.hub, "link", "set", f"node{index}", "master", "br0", "up")
    await _ip("-n", router, "addr", "add", f"{net.public_host(index)}/24", "dev", "eth0")
    await _ip("-n", router, "link", "set", "eth0", "up")
    await _ip("-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
              "netns", ns)
    await _ip("-n", router, "addr", "add", f"{private + 1}/30", "dev", "lan")
    await _ip("-n", router, "link", "set", "lan", "up")
    await _ip("-n", ns, "addr", "add", f"{private + 2}/30", "dev", "eth0")
    await _ip("-n", ns, "link", "set", "eth0", "up")
    await _ip("-n", ns, "route", "add", "default", "via", str(private + 1))
    await _ip("route", "add", f"{private}/30", "via", net.public_host(index), "dev", host_if)
    for argv in (["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                 ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j",
                  "MASQUERADE"]):
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", router, *argv, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode != 0:
            raise SwarmError(f"NAT for node {index}: {' '.join(argv)}: {err.decode().strip()}")


@contextlib.asynccontextmanager
async def netns_network(nodes: int, link: Network, *,
                        nat: frozenset[int] = frozenset()) -> AsyncIterator[NetnsNetwork]:
    """Create the namespaces, bridge and links for `nodes` nodes; delete them on exit.
    Nodes in `nat` are put behind a MASQUERADE router (needs iptables)."""
    if os.geteuid() != 0:
        raise ConfigError("--netns needs root")
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"--netns supports 1..{MAX_NODES} nodes")
    if any(not 0 <= i < min(nodes, 64) for i in nat):
        raise ConfigError("nodes behind NAT must be among the first 64 nodes")
    existing = [line.split()[0] for line in (await _ip("netns", "list")).splitlines() if line]
    for name in stale_namespaces(existing):
        await _ip("netns", "del", name, check=False)
    pid = os.getpid()
    net = NetnsNetwork(run=f"{PREFIX}{pid}", nodes=nodes,
                       subnet=_subnet(await _ip("-4", "route"), pid), notes=[],
                       nat=frozenset(nat))
    host_if = f"sn{pid}"[:15]
    created: list[str] = []
    try:
        created.append(net.hub)
        await _ip("netns", "add", net.hub)
        await _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
        await _ip("-n", net.hub, "link", "set", "br0", "up")
        await _ip("link", "add", host_if, "type", "veth", "peer", "name", "tohost", "netns", net.hub)
        await _ip("-n", net.hub, "link", "set", "tohost", "master", "br0", "up")
        await _ip("addr", "add", f"{net.subnet.network_address + 1}/24", "dev", host_if)
        await _ip("link", "set", host_if, "up")
        for i in range(nodes):
            ns = net.namespace(i)
            created.append(ns)
            await _ip("netns", "add", ns)
            await _ip("-n", ns, "link", "set", "lo", "up")
            if i in net.nat:
                created.append(net.router(i))
                await _ip("netns", "add", net.router(i))
                await _behind_nat(net, i, host_if)
                continue
            await _ip("-n", net.hub, "link", "add", f"node{i}", "type", "veth", "peer", "name",
                      "eth0", "netns", ns)
            await _ip("-n", net.hub, "link", "set", f"node{i}", "master", "br0", "up")
            await _ip("-n", ns, "addr", "add", f"{net.host(i)}/24", "dev", "eth0")
            await _ip("-n", ns, "link", "set", "eth0", "up")
        if link.latency_ms or link.jitter_ms or link.loss_percent:
            ok, why = await _netem(net.namespace(0), "eth0", link)
            if not ok:
                net.notes.append(f"tc netem is not available here ({why}): links carry no "
                                 f"added latency or loss")
            else:
                for i in range(nodes):
                    for ns, dev in ((net.namespace(i), "eth0"), (net.hub, f"node{i}")):
                        ok, why = await _netem(ns, dev, link)
                        if not ok:
                            raise SwarmError(f"tc netem on {dev} in {ns}: {why}")
                net.notes.append(f"links: {link.latency_ms:g} ms +- {link.jitter_ms:g} ms, "
                                 f"{link.loss_percent:g}% loss, each direction (tc netem)")
        yield net
    finally:
        # Deleting a namespace deletes its veth ends, and with them their peers.
        for name in reversed(created):
            await _ip("netns", "del", name, check=False)
        await _ip("link", "del", host_if, check=False)
