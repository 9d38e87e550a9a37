"""The gossip transport over py-libp2p: TCP, Noise, yamux, GossipSub, behind an asyncio API.

py-libp2p runs on trio only, so each `Libp2pGossip` owns one thread that runs the
libp2p host under `trio.run`. The asyncio side talks to it without blocking:
calls go in with `TrioToken.run_sync_soon` (FIFO, so a subscribe is registered
before a later publish runs) and results and messages come back with
`loop.call_soon_threadsafe`. Settings that differ from py-libp2p's defaults are
explained in shared/notes/libp2p.md (several defaults are unsafe or slow).

Validators and snapshot providers run on the libp2p thread: they must be thread-safe
and fast.

Snapshots travel on their own stream protocol, SNAPSHOT_PROTOCOL, one stream per pull:
the puller writes the topic (u16 length, UTF-8), the server answers a status byte and,
when it is OK, a u32 item count and each item as u32 length + bytes (big-endian), then
closes. Both ends bound the count, the bytes and the time; a server answers BUSY past
its per-peer pull rate or its concurrent pulls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import ipaddress
import logging
import random
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarm._errors import ConfigError, SwarmError, UnavailableError
from swarm._types import PeerId
from swarm.protocol._gossip import (
    MAX_SNAPSHOT_BYTES,
    MAX_SNAPSHOT_ITEMS,
    Gossip,
    GossipMessage,
    PulledItems,
    SnapshotProvider,
    Subscription,
    Validation,
    Validator,
    bounded_snapshot,
)
from swarm.protocol._identity import Identity
from swarm.protocol._membership import RateLimiter

if TYPE_CHECKING:
    import trio
    from libp2p.abc import IHost, INetStream
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.pubsub.pb.rpc_pb2 import Message
    from libp2p.pubsub.pubsub import Pubsub

__all__ = ["Libp2pConfig", "Libp2pGossip"]

log = logging.getLogger("swarm.protocol")

# GossipSub's inbound frame limit is 1 MiB including the envelope (key, signature, topic).
MAX_MESSAGE_BYTES = 1024 * 1024 - 16 * 1024
# Accepted-but-not-yet-drained messages remembered for their forwarder (bounded).
_PENDING_FORWARDERS = 4096
# How often we look for new pubsub peers to (re)announce our topics to.
_ANNOUNCE_CHECK_INTERVAL = 0.2
# Publish waits (at most _PUBLISH_WAIT_MAX) while a peer's outbound queue (32) is this full.
_QUEUE_HIGH_WATER = 16
_PUBLISH_WAIT_MAX = 0.25
_PUBLISH_WAIT_POLL = 0.002
# How often a bootstrap link is checked once it is up.
_LINK_CHECK_INTERVAL = 0.5
# After close() asks the host to stop, how long a graceful shutdown may take before it
# is cancelled, and how long close() then waits for the thread before giving up on it.
_SHUTDOWN_GRACE = 5.0
_JOIN_TIMEOUT = _SHUTDOWN_GRACE + 2.0

SNAPSHOT_PROTOCOL = "/swarm/snapshot/1.0.0"
_MAX_TOPIC_BYTES = 256
# Answer status bytes.
_SNAPSHOT_OK, _SNAPSHOT_UNKNOWN_TOPIC, _SNAPSHOT_BUSY, _SNAPSHOT_FAILED = 0, 1, 2, 3
_SNAPSHOT_STATUS = {_SNAPSHOT_UNKNOWN_TOPIC: "serves no snapshot of the topic",
                    _SNAPSHOT_BUSY: "is busy", _SNAPSHOT_FAILED: "failed to make one"}
# Snapshots served at once; more pulls are answered BUSY (each may hold 8 MiB).
_SNAPSHOT_CONCURRENCY = 8


@dataclass(frozen=True)
class Libp2pConfig:
    """Settings of one libp2p host. Defaults suit a LAN or loopback swarm."""

    # Interface to listen on (an IPv4 or IPv6 literal); 0.0.0.0 listens on all of them.
    host: str = "127.0.0.1"
    # TCP port; 0 picks a free one (read the result from Libp2pGossip.listen_addrs).
    port: int = 0
    # Peers to dial and stay connected to: /ip4/HOST/tcp/PORT/p2p/PEERID multiaddrs.
    bootstrap: tuple[str, ...] = ()
    # GossipSub heartbeat (mesh repair, gossip) in seconds; py-libp2p's default is 120 s.
    heartbeat_interval: float = 1.0
    # Ping every connection this often; a failed ping closes the connection, which is
    # what notices a frozen (SIGSTOPped, partitioned) peer: detection takes about
    # health_check_interval + ping_timeout. A closed socket is noticed at once anyway.
    health_check_interval: float = 3.0
    # How long a ping may take before the connection counts as dead.
    ping_timeout: float = 2.0
    # New connections are not pinged during their first seconds (handshakes settle).
    health_warmup: float = 2.0
    # Give up one dial attempt (TCP + Noise + yamux) after this many seconds.
    dial_timeout: float = 5.0
    # Bootstrap redial backoff: first delay, doubling up to the max, each with jitter.
    bootstrap_backoff_initial: float = 0.25
    bootstrap_backoff_max: float = 30.0
    # Find peers on the local network by mDNS (off: it announces us to the whole LAN).
    enable_mdns: bool = False
    # Messages buffered per subscriber on the asyncio side; when full the oldest is
    # dropped and counted in Libp2pGossip.dropped.
    max_queued_messages: int = 1024
    # Longest a snapshot pull may take (stream, request, answer); a server drops a
    # puller that takes longer to ask or to read.
    snapshot_timeout: float = 5.0
    # Snapshots served per peer: sustained pulls/s and burst (more are answered BUSY).
    snapshot_rate: float = 0.5
    snapshot_burst: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        try:
            ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise ConfigError(f"libp2p listen host must be an IP address, got {self.host!r}") from exc
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"libp2p port must be 0..65535, got {self.port}")
        for name in ("heartbeat_interval", "health_check_interval", "ping_timeout", "dial_timeout",
                     "bootstrap_backoff_initial", "snapshot_timeout", "snapshot_rate",
                     "snapshot_burst"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"libp2p {name} must be positive, got {getattr(self, name)}")
        if self.health_warmup < 0:
            raise ConfigError(f"libp2p health_warmup must be >= 0, got {self.health_warmup}")
        if self.bootstrap_backoff_max < self.bootstrap_backoff_initial:
            raise ConfigError("libp2p bootstrap_backoff_max must be >= bootstrap_backoff_initial")
        if self.max_queued_messages < 1:
            raise ConfigError(f"max_queued_messages must be >= 1, got {self.max_queued_messages}")
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(f"bootstrap address {addr!r} must end in /p2p/PEERID")


class _State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


def _closed_error() -> RuntimeError:
    return RuntimeError("the libp2p gossip transport is closed")


class Libp2pGossip(Gossip):
    """GossipSub over libp2p (Noise, yamux, TCP) with an asyncio interface.

    Create it with `await Libp2pGossip.start(identity, config)`; `await close()` when
    done (idempotent). Validators installed with `set_validator` run on the libp2p
    thread, so they must be thread-safe; an exception in one counts as REJECT. Our
    own publishes skip our validators (they judge what peers send us) and reach our
    own subscribers too.
    """

    def __init__(self, identity: Identity, config: Libp2pConfig) -> None:
        """Use `Libp2pGossip.start`; the constructor starts nothing."""
        self._identity = identity
        self._config = config
        self._state = _State.STARTING
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._host: _TrioHost | None = None
        self._listen_addrs: list[str] = []
        self._ready: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._close_lock = asyncio.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._trio_topics: set[str] = set()
        self._dropped = 0

    @classmethod
    async def start(cls, identity: Identity, config: Libp2pConfig) -> Libp2pGossip:
        """Start a host; returns once it listens and GossipSub runs (bootstrap dials go on).

        Raises ConfigError when it cannot listen (port in use, bad address) or a
        bootstrap address does not parse.
        """
        self = cls(identity, config)
        await self._start()
        return self

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        _check_port_free(self._config.host, self._config.port)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ready = loop.create_future()
        self._exited = loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"libp2p-{self._identity.peer_id.short}")
        self._thread.start()
        try:
            await asyncio.shield(self._ready)
        except BaseException:
            self._ready.cancel()  # nobody will read its outcome now
            await self.close()
            raise
        self._state = _State.RUNNING
        log.info("libp2p host listening",
                 extra={"peer": self._identity.peer_id.short, "addrs": ",".join(self._listen_addrs)})

    def _thread_main(self) -> None:
        """Body of the libp2p thread: the whole trio run, reported back to asyncio."""
        try:
            _import_libp2p()
            import trio

            host = _TrioHost(self._identity, self._config, self._deliver_from_trio)
            self._host = host
            trio.run(host.run, self._ready_from_trio)
        except BaseException as exc:  # reported to the asyncio side, never lost
            self._call_in_loop(self._on_exit, exc)
        else:
            self._call_in_loop(self._on_exit, None)

    def _ready_from_trio(self, token: trio.lowlevel.TrioToken, addrs: list[str]) -> None:
        self._call_in_loop(self._on_ready, token, addrs)

    def _deliver_from_trio(self, batch: list[GossipMessage]) -> None:
        self._call_in_loop(self._on_messages, batch)

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_ready(self, token: trio.lowlevel.TrioToken, addrs: list[str]) -> None:
        self._token = token
        self._listen_addrs = addrs
        if self._state is not _State.STARTING:  # close() came first (start was cancelled)
            self._request_stop()
        elif self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _on_exit(self, exc: BaseException | None) -> None:
        failure = _translate(exc) if exc is not None else None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(failure or RuntimeError("libp2p host stopped while starting"))
        elif self._state is _State.RUNNING:
            log.error("libp2p host stopped unexpectedly", exc_info=failure)
            self._state = _State.CLOSING  # unusable now; close() still joins the thread
        self._end_subscriptions()
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)

    def _request_stop(self) -> None:
        import trio

        if self._host is None or self._token is None:
            return  # not ready yet: _on_ready will ask
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._host.stop_soon)

    async def close(self) -> None:
        """Leave the network; subscriptions end; idempotent and safe in `finally`."""
        async with self._close_lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSING
            try:
                await self._stop_thread()
            finally:
                self._state = _State.CLOSED
                self._end_subscriptions()

    async def _stop_thread(self) -> None:
        if self._thread is None or self._exited is None:
            return
        self._request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), _JOIN_TIMEOUT)
        except TimeoutError:
            log.error("libp2p thread did not stop in time; abandoning it",
                      extra={"thread": self._thread.name})
            return
        # The thread's last act was scheduling _on_exit: it is at most returning now.
        self._thread.join(timeout=1.0)

    # ------------------------------------------------------------------ Gossip API

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def listen_addrs(self) -> list[str]:
        """Full multiaddrs to dial this host, each ending in /p2p/<peer id>."""
        return list(self._listen_addrs)

    @property
    def dropped(self) -> int:
        """Messages dropped because a subscriber's queue was full (oldest dropped first)."""
        return self._dropped

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and send `data` to `topic`'s subscribers, ours included.

        Raises ValueError for data over MAX_MESSAGE_BYTES, RuntimeError when closed.
        """
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        host = self._running_host()
        await self._call_trio(host.publish, topic, bytes(data))

    def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        """Validated messages on `topic` until close; `aclose()` the iterator to leave early.

        A subscriber that falls behind by more than `max_queued_messages` loses the
        oldest messages (counted in `dropped`).
        """
        sub = Subscription(topic, self._config.max_queued_messages, self._unsubscribe)
        if self._state is not _State.RUNNING:
            sub.end()
            return sub
        self._subs.setdefault(topic, set()).add(sub)
        if topic not in self._trio_topics:
            self._trio_topics.add(topic)
            self._send_trio(self._running_host().subscribe_soon, topic)
        return sub

    def set_validator(self, topic: str, validator: Validator) -> None:
        """Install `validator` for `topic`; it runs on the libp2p thread (be thread-safe).

        ACCEPT delivers and forwards; IGNORE and REJECT drop; an exception is a REJECT.
        """
        self._send_trio(self._running_host().set_validator_soon, topic, validator)

    def set_snapshot(self, topic: str, provider: SnapshotProvider) -> None:
        """Serve `provider()` to pullers of `topic`; it runs on the libp2p thread."""
        self._send_trio(self._running_host().set_snapshot_soon, topic, provider)

    async def pull(self, topic: str, peer: PeerId) -> list[GossipMessage]:
        """`peer`'s snapshot of `topic` over SNAPSHOT_PROTOCOL, validated on the libp2p thread.

        Raises UnavailableError (unreachable, no such snapshot, busy, over the limits,
        past `snapshot_timeout`), RuntimeError when closed.
        """
        items: list[GossipMessage] = await self._call_trio(
            self._running_host().pull_snapshot, topic, peer)
        return items

    def connected_peers(self) -> list[PeerId]:
        if self._state is not _State.RUNNING or self._host is None:
            return []
        return self._host.connected_peers()

    async def connect(self, addr: str) -> None:
        """Dial the peer at multiaddr `addr` (ending in /p2p/<peer id>) once."""
        info = _parse_bootstrap(addr)
        await self._call_trio(self._running_host().dial, info)

    # ------------------------------------------------------------------ plumbing

    def _running_host(self) -> _TrioHost:
        if self._state is not _State.RUNNING or self._host is None:
            raise _closed_error()
        return self._host

    def _send_trio(self, fn: Callable[..., None], *args: Any) -> None:
        """Run sync `fn(*args)` on the trio thread soon (FIFO with other sends)."""
        import trio

        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError as exc:
            raise _closed_error() from exc

    async def _call_trio(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await `afn(*args)` in the trio thread: its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(exc: BaseException | None, result: Any = None) -> None:  # on the trio thread
            self._call_in_loop(_settle, done, exc, result)

        self._send_trio(self._running_host().spawn, afn, args, settle)
        return await done

    def _on_messages(self, batch: list[GossipMessage]) -> None:
        for msg in batch:
            for sub in self._subs.get(msg.topic, ()):
                if not sub.push(msg):
                    self._dropped += 1

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)

    def _end_subscriptions(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.end()
        self._subs.clear()


def _settle(fut: asyncio.Future[Any], exc: BaseException | None, result: Any) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


# ---------------------------------------------------------------------- trio side


class _TrioHost:
    """The libp2p host, pubsub and their tasks; every method runs on the trio thread.

    `connected_peers` is the exception: it reads a dict snapshot, atomic under the GIL.
    """

    def __init__(self, identity: Identity, config: Libp2pConfig,
                 deliver: Callable[[list[GossipMessage]], None]) -> None:
        self._identity = identity
        self._config = config
        self._deliver = deliver
        self._validators: dict[str, Validator] = {}
        self._snapshots: dict[str, SnapshotProvider] = {}
        self._pulled = PulledItems()
        self._snapshot_limiter = RateLimiter(config.snapshot_rate, config.snapshot_burst)
        self._serving = 0  # snapshots being served now
        self._wrapped_topics: set[str] = set()
        self._topic_ready: dict[str, trio.Event] = {}
        # (topic, author, seqno) -> the message as our validator saw it (with its forwarder),
        # handed to subscribers when libp2p delivers it.
        self._accepted: collections.OrderedDict[tuple[str, bytes, bytes], GossipMessage] = (
            collections.OrderedDict())
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._scope: trio.CancelScope | None = None

    # -------------------------------------------------------------- main

    async def run(self, on_ready: Callable[[trio.lowlevel.TrioToken, list[str]], None]) -> None:
        import trio
        from libp2p.tools.anyio_service import background_trio_service

        self._stop = trio.Event()
        with trio.CancelScope() as scope:
            self._scope = scope
            bootstrap = [_parse_bootstrap(addr) for addr in self._config.bootstrap]
            host, pubsub, gossipsub = self._build()
            self._host, self._pubsub = host, pubsub
            host.set_stream_handler(SNAPSHOT_PROTOCOL, self._serve_snapshot)  # type: ignore[arg-type]
            try:
                async with host.run([_listen_multiaddr(self._config)]):
                    if not host.get_transport_addrs():
                        raise ConfigError(f"libp2p could not listen on "
                                          f"{self._config.host}:{self._config.port}")
                    async with background_trio_service(pubsub), \
                            background_trio_service(gossipsub):
                        await pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            nursery.start_soon(self._announce_to_new_peers)
                            own = host.get_id()
                            for info in bootstrap:
                                if info.peer_id != own:
                                    nursery.start_soon(self._keep_connected, info)
                            on_ready(trio.lowlevel.current_trio_token(),
                                     [str(a) for a in host.get_addrs()])
                            await self._stop.wait()
                            nursery.cancel_scope.cancel()
                    await _close_host(host)
            finally:
                self._nursery = None
                # Pubsub's seen-message cache runs a sweeper thread that nothing else stops.
                pubsub.seen_messages.stop()

    def _build(self) -> tuple[IHost, Pubsub, Any]:
        from libp2p import new_host
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.crypto.keys import KeyPair
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
        from libp2p.custom_types import TProtocol
        from libp2p.network.config import ConnectionConfig
        from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
        from libp2p.stream_muxer.yamux.yamux import Yamux

        cfg = self._config
        private = Ed25519PrivateKey.from_bytes(self._identity.seed)
        key_pair = KeyPair(private, private.get_public_key())
        host = new_host(
            key_pair=key_pair,
            # Noise only: a default host also accepts plaintext and secio.
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=new_x25519_key_pair().private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=[_listen_multiaddr(cfg)],
            enable_mDNS=cfg.enable_mdns,
            connection_config=ConnectionConfig(
                # More than one per peer makes every connect wait ~250 ms.
                max_connections_per_peer=1,
                dial_timeout=cfg.dial_timeout,
                # Pings are the only way to notice a frozen peer (its socket stays open).
                enable_health_monitoring=True,
                health_initial_delay=cfg.health_warmup,
                health_warmup_window=cfg.health_warmup,
                health_check_interval=cfg.health_check_interval,
                ping_timeout=cfg.ping_timeout,
                abort_connection_on_ping_failure=True,
            ),
        )
        if host.get_id().to_base58() != self._identity.peer_id.value:
            raise RuntimeError("libp2p derived a different peer id from our identity key")
        gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6, degree_low=4, degree_high=12,
            do_px=True,
            heartbeat_interval=cfg.heartbeat_interval,  # type: ignore[arg-type]  # float works
            # Caps every topic at 10 msg/s per forwarding peer, our own publishes included,
            # and drops the rest silently; our validators rate-limit per author instead.
            spam_protection_enabled=False,
            # "Adapts" the heartbeat to 30-60 s whenever the mesh looks small.
            adaptive_gossip_enabled=False,
            # Publishes are also queued for connected peers not (yet) known to subscribe,
            # to cover the subscription exchange after a connect; the defaults (100 per
            # 30 s) log a warning per publish above ~3 msg/s on a topic some peer skips.
            max_pending_messages_per_peer=256,
            pending_messages_ttl=5.0,
        )
        pubsub = Pubsub(
            host, gossipsub, strict_signing=True,
            # A cached verdict would skip our validators, which also judge freshness.
            validation_cache_ttl=0, validation_cache_size=1,
        )
        return host, pubsub, gossipsub

    async def _keep_connected(self, info: PeerInfo) -> None:
        """Dial a bootstrap peer until connected; redial whenever the link drops."""
        import trio

        assert self._host is not None
        cfg = self._config
        backoff = cfg.bootstrap_backoff_initial
        failures = 0
        was_connected = False
        while True:
            if self._is_connected(info.peer_id):
                backoff, failures, was_connected = cfg.bootstrap_backoff_initial, 0, True
                await trio.sleep(_LINK_CHECK_INTERVAL)
                continue
            try:
                with trio.fail_after(cfg.dial_timeout):
                    await self._host.connect(info)
            except Exception as exc:  # any dial failure, TooSlowError included
                failures += 1
                # A bootstrap peer never reached is worth a warning (a wrong address?); one
                # that was up and went away is churn, which membership reports once.
                (log.warning if failures == 1 and not was_connected else log.debug)(
                    "bootstrap dial failed; retrying",
                    extra={"peer": str(info.peer_id)[-8:], "attempt": failures,
                           "error": repr(exc)[:200]})
                await trio.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, cfg.bootstrap_backoff_max)
            else:
                log.info("connected to bootstrap peer", extra={"peer": str(info.peer_id)[-8:]})

    async def _announce_to_new_peers(self) -> None:
        """Tell every newly added pubsub peer all our topics.

        py-libp2p 0.8.1 builds its hello (our topics) before registering the peer's
        stream, and a subscribe in between announces to registered peers only: that
        peer never learns the topic and never sends us its messages on it.
        """
        import trio
        from libp2p.pubsub.pb import rpc_pb2

        assert self._pubsub is not None
        pubsub = self._pubsub
        known: set[ID] = set()
        while True:
            await trio.sleep(_ANNOUNCE_CHECK_INTERVAL)
            peers = set(pubsub.peers)
            new, known = peers - known, peers
            topics = list(pubsub.topic_ids)
            if not new or not topics:
                continue
            announce = rpc_pb2.RPC(subscriptions=[
                rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic) for topic in topics])
            for peer in new:
                queue = pubsub.peer_queues.get(peer)
                if queue is not None:
                    queue.push(announce)

    async def dial(self, info: PeerInfo) -> None:
        """Connect to `info` once (no-op when connected); TooSlowError past dial_timeout."""
        import trio

        assert self._host is not None
        if self._is_connected(info.peer_id):
            return
        with trio.fail_after(self._config.dial_timeout):
            await self._host.connect(info)

    def _is_connected(self, peer: ID) -> bool:
        assert self._host is not None
        return bool(self._host.get_network().connections.get(peer))

    def connected_peers(self) -> list[PeerId]:
        host = self._host
        if host is None:
            return []
        return [PeerId(pid.to_base58())
                for pid, conns in list(host.get_network().connections.items()) if conns]

    # -------------------------------------------------------------- commands (via run_sync_soon)

    def stop_soon(self) -> None:
        import trio

        if self._stop is not None:
            self._stop.set()
        if self._scope is not None:
            # Fail-safe: a shutdown step that hangs is cancelled after the grace period.
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + _SHUTDOWN_GRACE)

    def spawn(self, afn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
              settle: Callable[..., None]) -> None:
        """Run `afn(*args)` as a task of the host; `settle(exc, result)` gets its outcome."""
        import trio

        async def task() -> None:
            try:
                result = await afn(*args)
            except trio.Cancelled:
                settle(_closed_error())
                raise
            except Exception as exc:
                settle(exc)
            else:
                settle(None, result)

        if self._nursery is None:
            settle(_closed_error())
            return
        try:
            self._nursery.start_soon(task)
        except RuntimeError:  # the nursery is closing
            settle(_closed_error())

    def subscribe_soon(self, topic: str) -> None:
        import trio

        if topic in self._topic_ready or self._nursery is None:
            return
        ready = trio.Event()
        self._topic_ready[topic] = ready
        self._wrap_validator(topic)
        self._nursery.start_soon(self._drain, topic, ready)

    def set_validator_soon(self, topic: str, validator: Validator) -> None:
        self._validators[topic] = validator
        self._wrap_validator(topic)

    def set_snapshot_soon(self, topic: str, provider: SnapshotProvider) -> None:
        self._snapshots[topic] = provider

    async def publish(self, topic: str, data: bytes) -> None:
        import trio

        assert self._pubsub is not None
        ready = self._topic_ready.get(topic)
        if ready is not None:
            await ready.wait()  # a subscribe sent before this publish is in place first
        # Each peer's outbound queue holds 32 RPCs and silently drops when full, so a
        # burst would lose most of itself: wait for room, but never long, so one stuck
        # peer (frozen until the health check drops it) cannot stall every publish.
        queues = self._pubsub.peer_queues
        deadline = trio.current_time() + _PUBLISH_WAIT_MAX
        # Polled: RpcQueue wakes its consumer only, it has no event for producers.
        while (any(len(q) >= _QUEUE_HIGH_WATER for q in queues.values())  # noqa: ASYNC110
               and trio.current_time() < deadline):
            await trio.sleep(_PUBLISH_WAIT_POLL)
        await self._pubsub.publish(topic, data)

    # -------------------------------------------------------------- snapshots

    async def pull_snapshot(self, topic: str, peer: PeerId) -> list[GossipMessage]:
        """Fetch `peer`'s snapshot of `topic`; the items our validator accepts."""
        import trio
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        assert self._host is not None
        items: list[bytes] = []
        try:
            with trio.fail_after(self._config.snapshot_timeout):
                stream = await self._host.new_stream(ID.from_base58(peer.value),
                                                     [TProtocol(SNAPSHOT_PROTOCOL)])
                try:
                    await stream.write(_snapshot_request(topic))
                    status = (await _read_exact(stream, 1))[0]
                    if status != _SNAPSHOT_OK:
                        raise UnavailableError(f"peer {peer.short} "
                                               f"{_SNAPSHOT_STATUS.get(status, 'answered nonsense')}")
                    (count,) = struct.unpack(">I", await _read_exact(stream, 4))
                    if count > MAX_SNAPSHOT_ITEMS:
                        raise UnavailableError(f"peer {peer.short} sent a snapshot of {count} items")
                    total = 0
                    for _ in range(count):
                        (size,) = struct.unpack(">I", await _read_exact(stream, 4))
                        total += size
                        if size > MAX_MESSAGE_BYTES or total > MAX_SNAPSHOT_BYTES:
                            raise UnavailableError(f"peer {peer.short} sent an oversized snapshot")
                        items.append(await _read_exact(stream, size))
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
        except UnavailableError:
            raise
        except trio.TooSlowError as exc:
            raise UnavailableError(f"peer {peer.short} sent no snapshot within "
                                   f"{self._config.snapshot_timeout:g} s") from exc
        except Exception as exc:  # libp2p raises many unrelated types for a lost peer
            raise UnavailableError(f"snapshot from peer {peer.short} failed: "
                                   f"{type(exc).__name__}: {exc}"[:300]) from exc
        validator = self._validators.get(topic)
        accepted = []
        for data in items:
            msg = GossipMessage(topic, data, received_from=peer, source=None)
            verdict = Validation.ACCEPT
            if validator is not None:
                try:
                    verdict = validator(msg)
                except Exception:
                    log.exception("gossip validator raised; rejecting the snapshot item",
                                  extra={"topic": topic, "peer": peer.short})
                    verdict = Validation.REJECT
            if verdict is Validation.ACCEPT:
                accepted.append(msg)
                self._pulled.add(topic, data)
        return accepted

    async def _serve_snapshot(self, stream: INetStream) -> None:
        """Answer one pull (SNAPSHOT_PROTOCOL's handler)."""
        import trio

        peer = str(stream.muxed_conn.peer_id)
        self._serving += 1
        try:
            with trio.move_on_after(self._config.snapshot_timeout):
                (length,) = struct.unpack(">H", await _read_exact(stream, 2))
                if length > _MAX_TOPIC_BYTES:
                    raise ValueError(f"topic of {length} bytes")
                topic = (await _read_exact(stream, length)).decode()
                await stream.write(self._snapshot_answer(peer, topic))
                await stream.close()
                return
            raise TimeoutError("the puller was too slow")
        except Exception as exc:  # the puller's problem: hang up on it
            log.debug("snapshot not served", extra={"peer": peer[-8:], "error": repr(exc)[:200]})
            with contextlib.suppress(Exception):
                await stream.reset()
        finally:
            self._serving -= 1

    def _snapshot_answer(self, peer: str, topic: str) -> bytes:
        provider = self._snapshots.get(topic)
        if provider is None:
            return bytes([_SNAPSHOT_UNKNOWN_TOPIC])
        if self._serving > _SNAPSHOT_CONCURRENCY or not self._snapshot_limiter.allow(peer):
            return bytes([_SNAPSHOT_BUSY])
        try:
            items = bounded_snapshot(provider())
        except Exception:
            log.exception("snapshot provider failed", extra={"topic": topic})
            return bytes([_SNAPSHOT_FAILED])
        parts = [struct.pack(">BI", _SNAPSHOT_OK, len(items))]
        for item in items:
            parts += [struct.pack(">I", len(item)), item]
        return b"".join(parts)

    # -------------------------------------------------------------- messages

    async def _drain(self, topic: str, ready: trio.Event) -> None:
        """Empty libp2p's 32-slot subscription buffer continuously into asyncio.

        Everything buffered goes in one batch: a receive per message would yield to
        the publishers after each one, and they can refill the buffer faster.
        """
        import trio

        assert self._pubsub is not None
        try:
            await self._pubsub.subscribe(topic)
        finally:
            ready.set()
        channel = self._pubsub.subscribed_topics_receive[topic].receive_channel
        while True:
            try:
                raw = [await channel.receive()]
            except trio.EndOfChannel:
                return
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while True:
                    raw.append(channel.receive_nowait())
            batch = []
            for msg in raw:
                seen = self._accepted.pop((topic, msg.from_id, msg.seqno), None)
                if seen is None:
                    try:
                        seen = _to_gossip(topic, msg, None)
                    except ValueError:
                        continue
                batch.append(seen)
            self._deliver(batch)

    def _wrap_validator(self, topic: str) -> None:
        # Every topic we touch gets our wrapper, validator or not: it records who forwarded
        # each message, which libp2p does not hand to subscribers.
        assert self._pubsub is not None
        if topic in self._wrapped_topics:
            return
        self._wrapped_topics.add(topic)
        self._pubsub.set_topic_validator(topic, functools.partial(self._validate, topic), False)

    def _validate(self, topic: str, forwarder: ID, msg: Message) -> bool:
        """libp2p's sync topic validator: True delivers and forwards, False drops."""
        assert self._host is not None
        try:
            gossip = _to_gossip(topic, msg, forwarder)
        except ValueError:
            return False
        local = forwarder == self._host.get_id()
        validator = None if local else self._validators.get(topic)
        verdict = Validation.ACCEPT
        if validator is not None:
            try:
                verdict = validator(gossip)
            except Exception:
                log.exception("gossip validator raised; rejecting the message",
                              extra={"topic": topic, "forwarder": gossip.received_from.short})
                verdict = Validation.REJECT
            verdict = self._pulled.owed(topic, gossip.data, verdict)
        if verdict is not Validation.ACCEPT:
            if verdict is Validation.REJECT:
                log.debug("gossip message rejected",
                          extra={"topic": topic, "forwarder": gossip.received_from.short})
            return False
        if topic in self._topic_ready:
            self._accepted[(topic, msg.from_id, msg.seqno)] = gossip
            while len(self._accepted) > _PENDING_FORWARDERS:
                self._accepted.popitem(last=False)
        return True


# ---------------------------------------------------------------------- helpers


def _snapshot_request(topic: str) -> bytes:
    raw = topic.encode()
    if len(raw) > _MAX_TOPIC_BYTES:
        raise ValueError(f"topic name over {_MAX_TOPIC_BYTES} bytes")
    return struct.pack(">H", len(raw)) + raw


async def _read_exact(stream: INetStream, size: int) -> bytes:
    """Exactly `size` bytes from `stream`; EOFError when it ends first."""
    from libp2p.network.stream.exceptions import StreamEOF

    buf = bytearray()
    while len(buf) < size:
        try:
            chunk = await stream.read(size - len(buf))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def _to_gossip(topic: str, msg: Message, forwarder: ID | None) -> GossipMessage:
    """Our view of a libp2p message; ValueError when ids are not valid peer ids."""
    from libp2p.peer.id import ID

    source = PeerId(ID(msg.from_id).to_base58())
    received_from = source if forwarder is None else PeerId(forwarder.to_base58())
    return GossipMessage(topic=topic, data=msg.data, received_from=received_from, source=source)


async def _close_host(host: IHost) -> None:
    """Close every connection (concurrently), then the host.

    host.run's exit closes connections only under cancellation, which leaves their
    sockets open: peers would not see us leave until their next failed ping. Each
    yamux close also sleeps 0.1 s (twice), hence concurrently.
    """
    import trio

    async def close_quietly(conn: Any) -> None:
        try:
            await conn.close()
        except Exception as exc:  # a broken connection is as good as closed
            log.debug("closing a libp2p connection failed", extra={"error": repr(exc)[:200]})

    async with trio.open_nursery() as nursery:
        for conns in list(host.get_network().connections.values()):
            for conn in list(conns):
                nursery.start_soon(close_quietly, conn)
    await host.close()


def _listen_multiaddr(config: Libp2pConfig) -> Any:
    import multiaddr

    family = "ip6" if ipaddress.ip_address(config.host).version == 6 else "ip4"
    return multiaddr.Multiaddr(f"/{family}/{config.host}/tcp/{config.port}")


def _parse_bootstrap(addr: str) -> PeerInfo:
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # multiaddr and libp2p raise several unrelated types
        raise ConfigError(f"bad bootstrap multiaddr {addr!r}: {exc}") from exc


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port someone listens on.

    py-libp2p binds with SO_REUSEPORT, so a second host on the same port would start
    fine and silently share incoming connections with the first. A probe socket
    without SO_REUSEPORT fails on any listener there.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"libp2p cannot listen on {host}:{port}: {exc.strerror}") from exc


def _translate(exc: BaseException) -> BaseException:
    """The error start() should raise for a failed trio run (unwrapping exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, SwarmError):
        return exc
    if isinstance(exc, OSError):
        return ConfigError(f"libp2p host failed to start: {exc}")
    return exc


_import_lock = threading.Lock()
_tamed = False

# Records py-libp2p logs as warnings and errors for what is routine in a swarm: a peer
# that died or left (its redials are refused, its pings fail). Membership says so once,
# in swarm's words; these become DEBUG records. (logger, message prefix)
_EXPECTED_PEER_FAILURES: tuple[tuple[str, str], ...] = (
    ("libp2p.transport.tcp.tcp", "Failed to open TCP stream"),
    ("libp2p.network.health.monitor", "Health check failed"),
)
# Modules that log through the logging module's functions (`logging.debug(...)`), which
# call logging.basicConfig() when the root logger has no handler: the host program's
# logging would be configured behind its back on the first connection.
_ROOT_LOGGING_MODULES = ("libp2p.network.connection.swarm_connection", "libp2p.tools.utils")


class _Demote(logging.Filter):
    """Makes records that start with one of `prefixes` DEBUG records (handlers then skip
    them unless they show debugging output)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and isinstance(record.msg, str) \
                and record.msg.startswith(self._prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class _ModuleLogger:
    """Stands in for the `logging` module inside a module that logs through its functions:
    the same calls go to a named logger (no basicConfig); anything else is `logging`'s."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def __getattr__(self, attr: str) -> Any:
        if attr in ("debug", "info", "warning", "error", "exception", "critical", "log"):
            return getattr(self._logger, attr)
        return getattr(logging, attr)


def _import_libp2p() -> None:
    """Import libp2p (~0.65 s) without letting it reset or configure the application's logging.

    `import libp2p` clears the handlers of the "libp2p" logger and pins the auto-connector's
    logger at INFO (a line every 10 s); keep what the application configured instead. Then
    (once, even if someone else imported libp2p first) keep it from configuring the root
    logger, and make routine peer failures DEBUG records (shared/notes/libp2p.md).
    """
    global _tamed
    with _import_lock:
        if "libp2p" not in sys.modules:
            lib = logging.getLogger("libp2p")
            handlers, level, propagate = list(lib.handlers), lib.level, lib.propagate
            import libp2p  # noqa: F401

            lib.handlers[:] = handlers
            lib.propagate = propagate
            # Unconfigured (NOTSET): warnings and errors only, as py-libp2p intends.
            lib.setLevel(level or logging.WARNING)
            logging.getLogger("libp2p.network.auto_connector").setLevel(logging.NOTSET)
        if _tamed:
            return
        _tamed = True
        import importlib

        for name in _ROOT_LOGGING_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if getattr(module, "logging", None) is logging:
                module.logging = _ModuleLogger(name)  # type: ignore[attr-defined]
        prefixes: dict[str, tuple[str, ...]] = {}
        for name, prefix in _EXPECTED_PEER_FAILURES:
            prefixes[name] = (*prefixes.get(name, ()), prefix)
        for name, group in prefixes.items():
            logging.getLogger(name).addFilter(_Demote(group))
