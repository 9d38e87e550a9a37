"""A light peer: joins the gossip network to listen, serves nothing (clients, the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from swarm._clock import SYSTEM_CLOCK, Clock, wait_within
from swarm.protocol._gossip import Gossip
from swarm.protocol._identity import Identity
from swarm.protocol._membership import Membership, MembershipConfig
from swarm.protocol._view import PeerView

__all__ = ["LightPeer"]

_SETTLE_SAMPLE = 0.1  # seconds between looks at the view while settling

GossipStarter = Callable[[Identity], Awaitable[Gossip]]


def libp2p_starter(bootstrap: Sequence[str], host: str = "127.0.0.1") -> GossipStarter:
    async def start(identity: Identity) -> Gossip:
        from swarm.protocol._libp2p import Libp2pConfig, Libp2pGossip

        gossip: Gossip = await Libp2pGossip.start(
            identity, Libp2pConfig(host=host, port=0, bootstrap=tuple(bootstrap)))
        return gossip

    return start


class LightPeer:
    """`async with LightPeer.libp2p([addr]) as peer: peer.view` — a live PeerView."""

    def __init__(self, starter: GossipStarter, *, config: MembershipConfig | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._starter = starter
        self._config = config or MembershipConfig()
        self._clock = clock
        self.identity = Identity.generate()  # ephemeral: a light peer signs nothing
        self.gossip: Gossip | None = None
        self.membership: Membership | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def libp2p(cls, bootstrap: Sequence[str], *, host: str = "127.0.0.1",
               clock: Clock = SYSTEM_CLOCK) -> LightPeer:
        return cls(libp2p_starter(bootstrap, host), clock=clock)

    @property
    def view(self) -> PeerView:
        if self.membership is None:
            raise RuntimeError("light peer is not started")
        return self.membership.view

    async def start(self) -> None:
        self.gossip = await self._starter(self.identity)
        self.membership = Membership(self.gossip, config=self._config, clock=self._clock)
        self._task = asyncio.create_task(self.membership.run(), name="light-peer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.gossip is not None:
            await self.gossip.close()
            self.gossip = None

    async def settle(self, timeout: float, quiet: float = 1.5) -> PeerView:
        """The view once it holds the swarm's current state; `timeout` bounds the wait.

        That is as soon as the first snapshots are in (pulled from the peers we are
        connected to first, normally the bootstrap peers: milliseconds after connecting).
        If no peer serves one, it is when no new peer appeared for `quiet` seconds
        (the view's size is sampled every 0.1 s on the peer's clock).
        """
        assert self.membership is not None
        synced = self.membership.synced
        deadline = self._clock.monotonic() + timeout
        count = -1
        changed_at = 0.0
        while not synced.is_set() and (now := self._clock.monotonic()) < deadline:
            if len(self.view) != count:
                count = len(self.view)
                changed_at = now
            elif count > 0 and now - changed_at >= quiet:
                break
            await wait_within(self._clock, synced.wait(), min(_SETTLE_SAMPLE, deadline - now))
        return self.view

    async def __aenter__(self) -> LightPeer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
