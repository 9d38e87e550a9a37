"""StakeBook: which providers the SDK may route to, as a trusted node's ledger says.

Adverts are the providers' own word, so a stake in one would prove nothing. The client asks
the nodes it joined through (its bootstrap peers: the user's choice of whom to believe) with
swarm.v1.LedgerService/GetEligible, which evaluates swarm.staking.eligible on that node's
own ledger at max(the network's minimum, the client's min_stake). Answers are cached per
threshold for `max_age` seconds.

A bootstrap node without a ledger (UNIMPLEMENTED) means staking is off: every provider is
allowed when the client asked for no minimum, none when it did (nothing can vouch for the
stake). A bootstrap node that cannot be reached keeps the last answer; with none yet, no
provider is eligible under a minimum and every provider is allowed without one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc

from swarm._clock import Clock
from swarm._errors import NoProviderError, SwarmError
from swarm._proto.swarm.v1 import ledger_pb2, ledger_pb2_grpc
from swarm._types import PeerId
from swarm.protocol import PeerChannels, PeerView

__all__ = ["StakeBook", "bootstrap_peers"]


def bootstrap_peers(addrs: Sequence[str]) -> tuple[PeerId, ...]:
    """The peer ids that `/.../p2p/<id>` multiaddrs name (others are skipped)."""
    found = []
    for addr in addrs:
        parts = addr.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "p2p":
            try:
                found.append(PeerId(parts[-1]))
            except SwarmError:
                continue
    return tuple(found)


class StakeBook:
    def __init__(self, trusted: Sequence[PeerId], view: Callable[[], PeerView],
                 channels: PeerChannels, clock: Clock, *, max_age: float = 2.0) -> None:
        self._trusted = tuple(trusted)
        self._view = view
        self._channels = channels
        self._clock = clock
        self._max_age = max_age
        # Staking on (True), off (False: the trusted node keeps no ledger), unknown (None).
        self.staking: bool | None = None
        # threshold asked -> (fetched at, eligible peers)
        self._eligible: dict[int, tuple[float, frozenset[PeerId]]] = {}
        self._lock = asyncio.Lock()
        self.failures = 0

    def rule(self, min_stake: int) -> Callable[[PeerId], bool] | None:
        """The Router's stake_ok for `min_stake` (None: allow all) from the cached answers."""
        if self.staking is False or (self.staking is None and min_stake == 0):
            if min_stake > 0:
                raise NoProviderError(f"min_stake={min_stake} asked for, but the nodes this "
                                      "client joined through keep no ledger")
            return None
        entry = self._eligible.get(min_stake)
        allowed = entry[1] if entry is not None else frozenset()
        return allowed.__contains__

    async def refresh(self, min_stake: int) -> None:
        """Ask a trusted node again unless the answer for `min_stake` is fresh."""
        async with self._lock:
            entry = self._eligible.get(min_stake)
            now = self._clock.monotonic()
            if entry is not None and now - entry[0] < self._max_age:
                return
            view = self._view()
            providers = sorted({e.peer_id for e in view if e.advert.models}, key=str)[:4096]
            for peer in self._trusted:
                trusted = view.entries.get(peer)
                if trusted is None or not trusted.advert.endpoints:
                    continue
                try:
                    channel = await self._channels.channel(peer, trusted.advert.endpoints[0])
                    reply = await ledger_pb2_grpc.LedgerServiceStub(channel).GetEligible(
                        ledger_pb2.GetEligibleRequest(peers=[str(p) for p in providers],
                                                      min_stake=min_stake), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self.staking = False
                        return
                    self.failures += 1
                    continue
                except (SwarmError, OSError):
                    self.failures += 1
                    continue
                self.staking = True
                asked = set(providers)
                self._eligible[min_stake] = (now, frozenset(
                    p for p in map(PeerId, reply.eligible) if p in asked))
                return
