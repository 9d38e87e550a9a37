"""The WireGuard mesh, pure part: keys, overlay addresses, which peers we want, and the
incremental `wg set` actions that get the interface there (no I/O here; the backend
that runs `wg`, `ip` and `wireguard-go` is swarm/protocol/_wireguard.py).

    members = mesh_members(view)                            # (peer, MeshMember) from adverts
    wanted = desired_peers(me, members, settings)           # checked, collisions refused
    actions = plan(wanted.peers, parse_dump(wg_dump), now)  # `wg set` peer / remove

Everything a member says about itself arrives in a signed advert, but the WireGuard key
in it is not proven by that signature (anyone may copy another's public key). So:
the overlay address must be the one derived from the key; a key or an address claimed
by two peer ids, or claiming ours, is refused for all its claimants (traffic to them
falls back to their ordinary endpoints); only literal IP endpoints are used (no name
lookups from strangers' bytes); allowed-ips are only ever the /128s we derive, so no
advert can pull other traffic into a tunnel.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from swarm._errors import ConfigError
from swarm._types import PeerId
from swarm.protocol._advert import MeshMember
from swarm.protocol._view import PeerView

__all__ = [
    "DEFAULT_PREFIX",
    "KEEPALIVE_SECONDS",
    "CurrentPeer",
    "Desired",
    "MeshSettings",
    "PeerConfig",
    "RemovePeer",
    "SetPeer",
    "derive_address",
    "desired_peers",
    "interface_name",
    "mesh_members",
    "overlay_endpoint",
    "parse_dump",
    "plan",
    "prefer_overlay",
    "public_key_b64",
    "split_endpoint",
]

# ULA /48 (RFC 4193) shared by every swarm mesh unless configured otherwise.
DEFAULT_PREFIX = "fd5a:7761:726d::/48"
ADDRESS_DOMAIN = b"swarm/mesh/address/v1\0"
# A member behind NAT keeps its mappings open with this (WireGuard's usual value).
KEEPALIVE_SECONDS = 25
# A handshake older than this means the learned endpoint may be dead (WireGuard's
# REJECT_AFTER_TIME is 180 s): the advertised one is tried again.
STALE_HANDSHAKE_SECONDS = 180.0


def public_key_b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_prefix(text: str) -> ipaddress.IPv6Network:
    try:
        prefix = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"mesh prefix {text!r} is not an IPv6 network: {exc}") from exc
    if not 8 <= prefix.prefixlen <= 96:
        raise ConfigError(f"mesh prefix {text}: length must be /8../96 (at least 32 host "
                          "bits, so that addresses derived from keys rarely collide)")
    return prefix


def derive_address(public_key: bytes, prefix: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    """The overlay address of a WireGuard public key: hash bits in the prefix's host part."""
    if len(public_key) != 32:
        raise ValueError("a WireGuard public key is 32 bytes")
    host_bits = 128 - prefix.prefixlen
    digest = int.from_bytes(hashlib.sha256(ADDRESS_DOMAIN + public_key).digest(), "big")
    host = digest & ((1 << host_bits) - 1)
    if host == 0:  # the subnet-router anycast address; stay off it
        host = 1
    return prefix.network_address + host


def interface_name(public_key: bytes) -> str:
    """Unique per key machine-wide (wireguard-go's socket dir is shared by all namespaces)."""
    return "swm" + hashlib.sha256(public_key).hexdigest()[:8]


def split_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """A literal "ip:port" or "[ipv6]:port" (never a name: no lookups from strangers' bytes)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not ip:port: {text!r}")
    return ipaddress.ip_address(host), int(port)


def overlay_endpoint(member: MeshMember) -> str:
    return f"[{member.address}]:{member.grpc_port}"


@dataclass(frozen=True, slots=True)
class MeshSettings:
    prefix: ipaddress.IPv6Network = field(
        default_factory=lambda: ipaddress.IPv6Network(DEFAULT_PREFIX))
    # Most peers configured (adverts beyond it are refused, counted).
    max_peers: int = 1024


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One peer as we want it on the interface."""

    public_key: bytes
    # Underlay "ip:port", or None (it dials us; WireGuard learns its address).
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int = 0


@dataclass(frozen=True, slots=True)
class Desired:
    # By public key.
    peers: dict[bytes, PeerConfig]
    # Peer id -> overlay gRPC endpoint, for every member reachable over the mesh.
    overlay: dict[PeerId, str]
    # Peer id -> why it is not a mesh peer.
    refused: dict[PeerId, str]
    # Public key -> peer id (mesh status shows who a key is).
    owners: dict[bytes, PeerId]


def mesh_members(view: PeerView) -> list[tuple[PeerId, MeshMember]]:
    """Every peer in the view whose advert says it is a mesh member, by peer id."""
    return sorted(((e.peer_id, e.advert.mesh) for e in view if e.advert.mesh is not None),
                  key=lambda item: item[0].value)


def _check(member: MeshMember, prefix: ipaddress.IPv6Network) -> str | None:
    if len(member.public_key) != 32:
        return "public key is not 32 bytes"
    try:
        address = ipaddress.IPv6Address(member.address)
    except ValueError:
        return f"overlay address {member.address[:64]!r} is not IPv6"
    if address != derive_address(member.public_key, prefix):
        return "overlay address is not the one its key derives in our prefix"
    if member.endpoint:
        try:
            split_endpoint(member.endpoint)
        except ValueError:
            return f"endpoint {member.endpoint[:64]!r} is not a literal ip:port"
    if not 0 < member.grpc_port < 65536:
        return f"grpc port {member.grpc_port} out of range"
    return None


def _relay_rank(own_key: bytes, relay_key: bytes) -> bytes:
    return hashlib.sha256(own_key + relay_key).digest()


def desired_peers(me: MeshMember, members: Iterable[tuple[PeerId, MeshMember]],
                  settings: MeshSettings,
                  trust: Callable[[PeerId], float] | None = None) -> Desired:
    """The peers our interface should have, from the members the view holds.

    Both ends public: each knows the other's endpoint. We are public, they are behind
    NAT: no endpoint; they dial us with keepalive, and WireGuard learns where from.
    We are behind NAT: every public member with its endpoint and a keepalive; members
    also behind NAT are reached through one relay (a public member that forwards),
    chosen by a hash of both keys (deterministic, spread over relays), whose peer
    entry then carries their /128s too.

    When more members than `max_peers` are valid, those with the most `trust` (staking:
    bonded stake on our ledger) get the places: identities are free, stake is not.
    """
    refused: dict[PeerId, str] = {}
    valid: list[tuple[PeerId, MeshMember]] = []
    for peer, member in members:
        why = _check(member, settings.prefix)
        if why is None and (member.public_key == me.public_key or member.address == me.address):
            why = "claims our key or overlay address"
        if why is not None:
            refused[peer] = why
        else:
            valid.append((peer, member))
    by_key: dict[bytes, list[PeerId]] = {}
    by_address: dict[str, list[PeerId]] = {}
    for peer, member in valid:
        by_key.setdefault(member.public_key, []).append(peer)
        by_address.setdefault(str(ipaddress.IPv6Address(member.address)), []).append(peer)
    accepted: list[tuple[PeerId, MeshMember]] = []
    if trust is not None:
        valid.sort(key=lambda item: -trust(item[0]))  # stable: ties keep their order
    for peer, member in valid:
        claimants = (by_key[member.public_key]
                     + by_address[str(ipaddress.IPv6Address(member.address))])
        if len(set(claimants)) > 1:
            refused[peer] = "key or overlay address also claimed by another peer (collision)"
        elif len(accepted) >= settings.max_peers:
            refused[peer] = f"mesh full ({settings.max_peers} peers)"
        else:
            accepted.append((peer, member))
    peers: dict[bytes, PeerConfig] = {}
    overlay: dict[PeerId, str] = {}
    owners: dict[bytes, PeerId] = {}
    natted_self = not me.endpoint
    relays = sorted((m for _, m in accepted if m.relay and m.endpoint),
                    key=lambda m: _relay_rank(me.public_key, m.public_key))
    relayed: list[str] = []
    for peer, member in accepted:
        host = f"{ipaddress.IPv6Address(member.address)}/128"
        if natted_self and not member.endpoint:
            if not relays:
                refused[peer] = "both behind NAT and no relay member"
                continue
            relayed.append(host)
            overlay[peer] = overlay_endpoint(member)
            continue
        peers[member.public_key] = PeerConfig(
            public_key=member.public_key, endpoint=member.endpoint or None,
            allowed_ips=(host,), keepalive=KEEPALIVE_SECONDS if natted_self else 0)
        overlay[peer] = overlay_endpoint(member)
        owners[member.public_key] = peer
    if relayed:
        relay = peers[relays[0].public_key]
        peers[relay.public_key] = dataclasses.replace(
            relay, allowed_ips=tuple(sorted({*relay.allowed_ips, *relayed})))
    return Desired(peers=peers, overlay=overlay, refused=refused, owners=owners)


@dataclass(frozen=True, slots=True)
class CurrentPeer:
    """One line of `wg show IF dump` (a peer as the interface has it now)."""

    public_key: bytes
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    # Unix seconds of the last handshake; 0: never.
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    keepalive: int


def parse_dump(text: str) -> tuple[int, dict[bytes, CurrentPeer]]:
    """(listen port, peers by public key) from `wg show IF dump`."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty wg dump")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ValueError(f"unexpected wg dump interface line: {lines[0]!r}")
    peers = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) != 8:
            raise ValueError(f"unexpected wg dump peer line: {line!r}")
        key = base64.b64decode(cols[0], validate=True)
        allowed = tuple(sorted(a for a in cols[3].split(",") if a and a != "(none)"))
        peers[key] = CurrentPeer(
            public_key=key, endpoint=None if cols[2] == "(none)" else cols[2],
            allowed_ips=allowed, latest_handshake=int(cols[4]), rx_bytes=int(cols[5]),
            tx_bytes=int(cols[6]), keepalive=0 if cols[7] == "off" else int(cols[7]))
    return int(head[2]), peers


@dataclass(frozen=True, slots=True)
class SetPeer:
    public_key: bytes
    # None: leave the endpoint as it is (new peer without one, or one WireGuard learned).
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int

    def args(self) -> list[str]:
        """The arguments after `wg set IF`."""
        out = ["peer", public_key_b64(self.public_key)]
        if self.endpoint is not None:
            out += ["endpoint", self.endpoint]
        out += ["persistent-keepalive", str(self.keepalive) if self.keepalive else "off",
                "allowed-ips", ",".join(self.allowed_ips)]
        return out


@dataclass(frozen=True, slots=True)
class RemovePeer:
    public_key: bytes

    def args(self) -> list[str]:
        return ["peer", public_key_b64(self.public_key), "remove"]


def _endpoint_to_set(want: PeerConfig, have: CurrentPeer | None, now: float) -> str | None:
    if want.endpoint is None:
        return None
    if have is None or have.endpoint is None:
        return want.endpoint
    # A peer WireGuard heard from recently is where its packets come from (through NAT,
    # say): never overwrite a working endpoint with the advertised one.
    recent = have.latest_handshake and now - have.latest_handshake < STALE_HANDSHAKE_SECONDS
    if recent or _same_endpoint(have.endpoint, want.endpoint):
        return None
    return want.endpoint


def _same_endpoint(a: str, b: str) -> bool:
    try:
        return split_endpoint(a) == split_endpoint(b)
    except ValueError:
        return a == b


def plan(desired: Mapping[bytes, PeerConfig], current: Mapping[bytes, CurrentPeer],
         now: float) -> list[SetPeer | RemovePeer]:
    """Incremental changes from `current` to `desired` (removals first, then by key):
    no action for a peer already as wanted, and never a full replace (that resets sessions).
    """
    actions: list[SetPeer | RemovePeer] = [RemovePeer(key) for key in sorted(current)
                                           if key not in desired]
    for key in sorted(desired):
        want, have = desired[key], current.get(key)
        endpoint = _endpoint_to_set(want, have, now)
        if (have is not None and endpoint is None and have.allowed_ips == want.allowed_ips
                and have.keepalive == want.keepalive):
            continue
        actions.append(SetPeer(key, endpoint, want.allowed_ips, want.keepalive))
    return actions


def prefer_overlay(view: PeerView, overlay: Mapping[PeerId, str]) -> PeerView:
    """The view with each mesh peer's overlay gRPC endpoint first (what routing and blob
    fetches dial); other peers' adverts unchanged."""
    if not overlay:
        return view
    entries = view.entries
    mutation = entries.mutate()
    for peer, endpoint in overlay.items():
        entry = entries.get(peer)
        if entry is None or (entry.advert.endpoints[:1] == (endpoint,)):
            continue
        advert = dataclasses.replace(entry.advert, endpoints=(endpoint, *entry.advert.endpoints))
        mutation[peer] = dataclasses.replace(entry, advert=advert)
    return dataclasses.replace(view, entries=mutation.finish())
