"""Peer-to-peer layer: identity, gossip, membership (libp2p lives only in this package).

_identity.py    Ed25519 identity, libp2p peer ids, signatures
_signed.py      signed envelopes (domain-separated Ed25519 over a protobuf payload)
_gossip.py      the Gossip transport interface (publish, subscribe, validators, snapshots)
                and the subscription buffer both transports share
_snapshot.py    SnapshotPuller: push-pull on join (pull a topic from each new connection)
_libp2p.py      Gossip over py-libp2p (GossipSub, Noise, yamux) on a trio thread
_memory.py      in-memory Gossip: seeded overlay, route hook (drop/delay/duplicate), partitions
_advert.py      capacity adverts and their signed wire form
_mesh.py        WireGuard mesh decisions (pure): overlay addresses from keys, wanted peers
                (collisions refused, NAT, relays), incremental `wg set` plans
_wireguard.py   MeshAgent: the interface (kernel or a supervised wireguard-go), `wg`/`ip`,
                reconciliation loop, teardown, crash leftovers; `mesh_status`
_view.py        PeerView: pure admit/expire over immutable maps
_membership.py  Membership: publish adverts, validate and admit others' (per-author rate,
                per-peer introduction budgets), serve/pull advert snapshots, expire silent peers
_tls.py         identity-bound TLS certificates (libp2p model), pinned gRPC channels
_responses.py   signed inference responses (canonical tensor digests, Ed25519)
_light.py       LightPeer: listen-only membership for clients
testing.py      the in-memory network for tests and the simulator (MemoryNetwork, ...)

`Libp2pGossip` and `Libp2pConfig` are imported on first use: importing this package does
not import libp2p or trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarm.protocol._advert import (
    ADVERT_DOMAIN,
    MAX_BATCH,
    MAX_QUEUE_DEPTH,
    Advert,
    Hardware,
    MeshMember,
    ModelOffer,
    Price,
)
from swarm.protocol._gossip import Gossip, GossipMessage, SnapshotProvider, Validation, Validator
from swarm.protocol._identity import Identity, peer_id_of, public_key_of_peer, verify
from swarm.protocol._light import LightPeer
from swarm.protocol._membership import (
    ADVERT_TOPIC,
    Membership,
    MembershipConfig,
    RateLimiter,
    significant_change,
)
from swarm.protocol._responses import ResponseSignature, sign_response, verify_response
from swarm.protocol._signed import open_envelope, seal
from swarm.protocol._snapshot import SnapshotPuller
from swarm.protocol._tls import (
    NodeCertificate,
    PeerChannels,
    make_certificate,
    peer_of_certificate,
)
from swarm.protocol._view import Admission, PeerEntry, PeerView, ViewPolicy, admit, check, expire
from swarm.protocol._wireguard import (
    MeshAgent,
    MeshOptions,
    check_mesh_prerequisites,
    endpoint_for,
    mesh_status,
)

if TYPE_CHECKING:
    from swarm.protocol._libp2p import Libp2pConfig, Libp2pGossip

__all__ = [
    "ADVERT_DOMAIN",
    "ADVERT_TOPIC",
    "MAX_BATCH",
    "MAX_QUEUE_DEPTH",
    "Admission",
    "Advert",
    "Gossip",
    "GossipMessage",
    "Hardware",
    "Identity",
    "Libp2pConfig",
    "Libp2pGossip",
    "LightPeer",
    "Membership",
    "MembershipConfig",
    "MeshAgent",
    "MeshMember",
    "MeshOptions",
    "ModelOffer",
    "NodeCertificate",
    "PeerChannels",
    "PeerEntry",
    "PeerView",
    "Price",
    "RateLimiter",
    "ResponseSignature",
    "SnapshotProvider",
    "SnapshotPuller",
    "Validation",
    "Validator",
    "ViewPolicy",
    "admit",
    "check",
    "check_mesh_prerequisites",
    "endpoint_for",
    "expire",
    "make_certificate",
    "mesh_status",
    "open_envelope",
    "peer_id_of",
    "peer_of_certificate",
    "public_key_of_peer",
    "seal",
    "sign_response",
    "significant_change",
    "verify",
    "verify_response",
]

_LAZY = {"Libp2pConfig", "Libp2pGossip"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from swarm.protocol import _libp2p

        return getattr(_libp2p, name)
    raise AttributeError(f"module 'swarm.protocol' has no attribute {name!r}")
