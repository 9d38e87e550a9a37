"""--netns plumbing: namespaces, links and partitions appear and disappear with the run."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from swarm.simnet._netns import PREFIX, netns_network, stale_namespaces
from swarm.simnet._scenario import Network

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2"),
]


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


LISTEN = """
import socket, sys
s = socket.create_server((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
"""


async def reaches(namespace: str | None, host: str, port: int) -> bool:
    """Whether a TCP connection from `namespace` (None: simnet's own) to host:port opens."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    process = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", CONNECT, host, str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(30):
        return await process.wait() == 0


async def test_namespaces_links_partition_and_cleanup() -> None:
    before = namespaces()
    async with netns_network(2, Network(latency_ms=1)) as net:
        mine = namespaces() - before
        assert mine == {net.hub, net.namespace(0), net.namespace(1)}
        assert net.wrap(1, ["true"]) == ["ip", "netns", "exec", net.namespace(1), "true"]
        server = await asyncio.create_subprocess_exec(
            *net.wrap(1, [sys.executable, "-c", LISTEN, net.host(1)]),
            stdout=asyncio.subprocess.PIPE)
        try:
            assert server.stdout is not None
            async with asyncio.timeout(30):
                port = int(await server.stdout.readline())
            assert await reaches(None, net.host(1), port)              # simnet -> node
            assert await reaches(net.namespace(0), net.host(1), port)  # node -> node (bridge)
            await net.partition(1, True)
            assert not await reaches(net.namespace(0), net.host(1), port)
            assert not await reaches(None, net.host(1), port)
            await net.partition(1, False)
            assert await reaches(net.namespace(0), net.host(1), port)
        finally:
            server.kill()
            await server.communicate()
    assert namespaces() == before
    assert f"sn{os.getpid()}:" not in links()


def test_stale_namespaces_are_those_of_dead_runs() -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    names = [f"{PREFIX}{dead}-hub", f"{PREFIX}{dead}-0", f"{PREFIX}{os.getpid()}-0", "other"]
    assert stale_namespaces(names) == names[:2]
