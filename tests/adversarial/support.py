"""Helpers of the hostile-input suite: hostile adverts, and what a call cost a process."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from swarm._proto.swarm.v1 import advert_pb2
from swarm._types import Digest
from swarm.node import Node
from swarm.protocol import ADVERT_DOMAIN, Advert, Identity, Membership, ModelOffer, seal
from swarm.protocol.testing import MemoryNetwork
from tests.waiting import wait_until

__all__ = ["Usage", "advertise", "rss_mb", "signed_offer", "usage_of"]


def signed_offer(author: Identity, **offer: float) -> bytes:
    """A validly signed advert from `author` whose one model offer (`acme/m`) carries
    `offer` as given, unchecked: what a hostile peer can put on the wire."""
    msg = advert_pb2.CapacityAdvert(
        peer_id=author.peer_id.value, sequence=1, timestamp_unix_ms=1, ttl_ms=1000,
        models=[advert_pb2.ModelOffer(digest=str(Digest.of(b"m")), name="acme/m", **offer)])
    return seal(advert_pb2.SignedAdvert, ADVERT_DOMAIN,
                msg.SerializeToString(deterministic=True), author)


async def advertise(network: MemoryNetwork, seed: int, *, endpoints: Sequence[str],
                    models: Sequence[ModelOffer], seen_by: Node) -> Identity:
    """Publish one signed advert from a new identity (a stranger); wait until `seen_by` holds it."""
    identity = Identity.from_seed(bytes([seed]) * 32)
    advert = Advert(peer_id=identity.peer_id, endpoints=tuple(endpoints), models=tuple(models),
                    sequence=0, timestamp=0.0, ttl=0.0)
    member = Membership(network.join(identity.peer_id), identity=identity,
                        source=lambda: advert)
    await member.publish_now()
    await wait_until(lambda: seen_by.router is not None
                     and identity.peer_id in seen_by.router.view.entries,
                     what=f"the node to admit the advert of {identity.peer_id.short}")
    return identity


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise LookupError(key)


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process now, MB."""
    return _status_kb(pid or os.getpid(), "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Highest resident memory a process has had, MB."""
    return _status_kb(pid, "VmHWM") / 1024


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU a process has used (all its threads), seconds."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    wall_s: float = 0.0


class usage_of:
    """`with usage_of() as used:` ... then used.cpu_s, used.rss_mb (growth), used.wall_s."""

    def __init__(self, pid: int | None = None) -> None:
        self._pid = pid
        self.used = Usage()

    def __enter__(self) -> Usage:
        self._cpu, self._rss, self._wall = (cpu_seconds(self._pid), rss_mb(self._pid),
                                            time.monotonic())
        return self.used

    def __exit__(self, *exc: object) -> None:
        self.used.cpu_s = cpu_seconds(self._pid) - self._cpu
        self.used.rss_mb = rss_mb(self._pid) - self._rss
        self.used.wall_s = time.monotonic() - self._wall
