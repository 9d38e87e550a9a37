"""The gossip interface every transport implements (libp2p, in-memory).

Topics carry opaque bytes. A transport delivers each message that its topic
validator accepts to every local subscriber, and forwards only accepted
messages to other peers, so an invalid or replayed advert dies at the first
honest hop. Nothing outside swarm/protocol imports libp2p or trio.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from swarm._types import PeerId

__all__ = ["Gossip", "GossipMessage", "Validation", "Validator"]


@dataclass(frozen=True, slots=True)
class GossipMessage:
    topic: str
    data: bytes
    # The peer that handed us the message (not necessarily its author).
    received_from: PeerId
    # The message's author as the transport saw it, when the transport knows it.
    source: PeerId | None = None


class Validation(enum.Enum):
    ACCEPT = "accept"  # deliver locally and forward
    IGNORE = "ignore"  # drop quietly (duplicate, stale): not the sender's fault
    REJECT = "reject"  # drop and count against the forwarding peer (forged, malformed)


# Called on the receiving side before delivery/forwarding; must be fast and pure-ish.
Validator = Callable[[GossipMessage], Validation]


class Gossip(abc.ABC):
    """Publish/subscribe over a peer-to-peer network, with an asyncio interface."""

    @property
    @abc.abstractmethod
    def peer_id(self) -> PeerId:
        """This host's peer id."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to every subscriber of `topic` (including our own subscribers)."""

    @abc.abstractmethod
    def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        """Messages on `topic` that passed validation, until the transport closes.

        Iteration ends (StopAsyncIteration) when the transport closes.
        """

    @abc.abstractmethod
    def set_validator(self, topic: str, validator: Validator) -> None:
        """Install the validator for `topic` (before subscribing)."""

    @abc.abstractmethod
    def connected_peers(self) -> list[PeerId]:
        """Peers with a live connection now."""

    @property
    @abc.abstractmethod
    def listen_addrs(self) -> list[str]:
        """Addresses other peers can `connect` to (advertised)."""

    @abc.abstractmethod
    async def connect(self, addr: str) -> None:
        """Open a connection to the peer at `addr` (one of its `listen_addrs`).

        Raises SwarmError subclasses (ConfigError for a malformed address) or
        OSError/TimeoutError when the peer cannot be reached.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the network; subscriptions end; idempotent."""
