"""The gossip interface every transport implements (libp2p, in-memory).

Topics carry opaque bytes. A transport delivers each message that its topic
validator accepts to every local subscriber, and forwards only accepted
messages to other peers, so an invalid or replayed advert dies at the first
honest hop. Nothing outside swarm/protocol imports libp2p or trio.

Gossip has no memory, so a peer that joins also pulls snapshots (push-pull on
join, as memberlist does): `set_snapshot(topic, provider)` serves what a
component holds now (its latest signed records), and `pull(topic, peer)`
fetches a peer's, passing each item through the topic's validator exactly as
if it had come by gossip.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import enum
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from swarm._types import PeerId

__all__ = ["Gossip", "GossipMessage", "PulledItems", "SnapshotProvider", "Subscription",
           "Validation", "Validator", "bounded_snapshot"]

# What one snapshot may carry, both ways: a server sends at most this much and a puller
# refuses more. 4,096 adverts of ~1 KB fit easily; views past that must split anyway
# (ARCHITECTURE.md, scale notes).
MAX_SNAPSHOT_ITEMS = 4096
MAX_SNAPSHOT_BYTES = 8 << 20


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

# Called on the serving side when a peer pulls a snapshot: the signed records to send,
# most important first (a bound cuts the tail). May run on the transport's thread.
SnapshotProvider = Callable[[], Sequence[bytes]]


class PulledItems:
    """Snapshot items a pull accepted whose gossip copy has not come yet (bounded, thread-safe).

    A record that arrives in a snapshot first makes its gossip copy a duplicate, which
    validators IGNORE, and an IGNOREd message is not forwarded: peers behind us would
    never get it by gossip. So a transport lets that one gossip copy through (`owed`:
    it is forwarded and delivered again, a no-op for an idempotent receiver).
    """

    def __init__(self, max_items: int = 4096) -> None:
        self._items: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()
        self._max = max_items
        self._lock = threading.Lock()

    def add(self, topic: str, data: bytes) -> None:
        with self._lock:
            self._items[(topic, data)] = None
            self._items.move_to_end((topic, data))
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def owed(self, topic: str, data: bytes, verdict: Validation) -> Validation:
        """The verdict for a gossip message: ACCEPT for the first gossip copy of a pulled
        item its validator IGNOREd, else `verdict` unchanged."""
        if verdict is not Validation.IGNORE:
            return verdict
        key = (topic, data)
        with self._lock:
            if key not in self._items:
                return verdict
            del self._items[key]
        return Validation.ACCEPT


def bounded_snapshot(items: Sequence[bytes], max_items: int = MAX_SNAPSHOT_ITEMS,
                     max_bytes: int = MAX_SNAPSHOT_BYTES) -> list[bytes]:
    """The head of `items` that fits in `max_items` and `max_bytes` (what a server sends)."""
    out: list[bytes] = []
    total = 0
    for item in items[:max_items]:
        total += len(item)
        if total > max_bytes:
            break
        out.append(bytes(item))
    return out


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
    def set_snapshot(self, topic: str, provider: SnapshotProvider) -> None:
        """Serve `provider()` to peers that `pull` `topic` (the provider must be thread-safe).

        The transport bounds what it sends (MAX_SNAPSHOT_ITEMS, MAX_SNAPSHOT_BYTES) and
        how often one peer may pull.
        """

    @abc.abstractmethod
    async def pull(self, topic: str, peer: PeerId) -> list[GossipMessage]:
        """`peer`'s snapshot of `topic`: the items the topic's validator ACCEPTs, in order.

        Each item is validated exactly as a gossip message would be, as a GossipMessage
        with `received_from=peer` and `source=None` (a snapshot names no publisher).
        Raises UnavailableError when the peer cannot be reached, does not serve `topic`,
        refuses (busy), breaks the limits, or does not answer in time.
        """

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


class Subscription(AsyncIterator[GossipMessage]):
    """One `subscribe()` call's bounded buffer, for every transport.

    The transport `push`es messages (the oldest is dropped when full) and `end`s it when
    the host stops; one task at a time iterates it; `aclose()` unsubscribes through
    `on_close` and drops what is buffered.
    """

    def __init__(self, topic: str, maxsize: int,
                 on_close: Callable[[Subscription], None]) -> None:
        self.topic = topic
        self._on_close = on_close
        self._items: collections.deque[GossipMessage] = collections.deque(maxlen=maxsize)
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def push(self, msg: GossipMessage) -> bool:
        """Queue `msg`; False when that pushed the oldest message out."""
        if self._ended:
            return True
        full = len(self._items) == self._items.maxlen
        self._items.append(msg)
        self._wake()
        return not full

    def end(self, *, discard: bool = False) -> None:
        """No more messages: iteration ends once the buffer (or, with `discard`, now) is empty."""
        self._ended = True
        if discard:
            self._items.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> GossipMessage:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("a subscription is iterated by one task at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def aclose(self) -> None:
        """Unsubscribe now; buffered messages are dropped and iteration ends."""
        self._on_close(self)
        self.end(discard=True)

