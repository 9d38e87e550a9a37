"""Peer-to-peer layer: identity, gossip, membership (libp2p lives only in this package).

_identity.py  Ed25519 identity, libp2p peer ids, signatures
"""

from swarm.protocol._identity import Identity, peer_id_of, verify

__all__ = ["Identity", "peer_id_of", "verify"]
