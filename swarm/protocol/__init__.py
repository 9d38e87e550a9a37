"""Peer-to-peer layer: identity, gossip, membership (libp2p lives only in this package).

_identity.py    Ed25519 identity, libp2p peer ids, signatures
_gossip.py      the Gossip transport interface (publish, subscribe, validators)
_libp2p.py      Gossip over py-libp2p (GossipSub, Noise, yamux) on a trio thread
_memory.py      in-memory Gossip: seeded overlay, route hook (drop/delay/duplicate), partitions
_advert.py      capacity adverts and their signed wire form
_view.py        PeerView: pure admit/expire over immutable maps
_membership.py  Membership: publish adverts, validate and admit others', expire silent peers
_light.py       LightPeer: listen-only membership for clients
"""

from swarm.protocol._identity import Identity, peer_id_of, verify

__all__ = ["Identity", "peer_id_of", "verify"]
