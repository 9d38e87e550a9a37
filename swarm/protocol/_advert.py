"""Capacity adverts: the project's own type, and its signed wire form.

`encode` signs the serialized payload; `decode` verifies the signature against
the key inlined in the author's peer id before anything else is trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from swarm._errors import IntegrityError, InvalidReferenceError
from swarm._proto.swarm.v1 import advert_pb2, node_pb2
from swarm._types import Digest, PeerId
from swarm.protocol._identity import Identity, public_key_of_peer
from swarm.protocol._signed import open_envelope, seal

__all__ = ["ADVERT_DOMAIN", "Advert", "Hardware", "MeshMember", "ModelOffer", "Price", "decode",
           "encode"]

ADVERT_DOMAIN = b"swarm/advert/v1\0"
MAX_ADVERT_BYTES = 64 * 1024
# Bounds of the demand signal a ModelOffer carries (hostile input: autoscalers act on it),
# and of the speed it states: items/s, arriving or executed.
MAX_ITEMS_RATE = 1e9
MAX_QUEUE_WAIT = 86_400.0  # seconds
# Bounds of the generation load a ModelOffer carries (hostile input: schedulers route on
# it). Far above any node (a KV cache of 2^20 sequences, 2^40 queued tokens), far below
# where float arithmetic on them loses meaning.
MAX_TOKEN_RATE = 1e9  # tokens/s
MAX_SEQUENCES = 1 << 20
MAX_QUEUED_TOKENS = 1 << 40
# Bounds of the capacity an offer states (schedulers score by it, autoscalers divide by it).
MAX_BATCH = 1 << 20  # items (for a generative model: sequence slots)
MAX_QUEUE_DEPTH = 1 << 24  # requests


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-units of the swarm's settlement currency."""

    per_request_micros: int = 0
    per_1k_items_micros: int = 0

    def cost(self, items: int) -> float:
        return self.per_request_micros + self.per_1k_items_micros * items / 1000


@dataclass(frozen=True, slots=True)
class Hardware:
    device_kind: str = "cpu"
    device_count: int = 1
    memory_bytes: int = 0
    device_name: str = ""


@dataclass(frozen=True, slots=True)
class ModelOffer:
    digest: Digest
    name: str
    tags: tuple[str, ...] = ()
    max_batch_size: int = 1
    items_per_second: float = 0.0
    queue_depth: int = 0
    # Demand signal over the author's last advert interval (swarm.autoscale reads it):
    # items/s that arrived, mean seconds queued, fraction of the time spent executing.
    arrival_rate: float = 0.0
    queue_wait: float = 0.0
    utilization: float = 0.0
    # Bytes the model's files take (what loading it needs, roughly); 0 = unknown.
    memory_bytes: int = 0
    # Loaded by the author's autoscaler, which may release it (not the operator's choice).
    autoscaled: bool = False
    # Generative models (0 for others), what routing by tokens reads (swarm.scheduler):
    # sequences decoding and queued; tokens/s generated over all of them, and the rate one
    # decoding sequence gets; prompt tokens not yet prefilled and tokens still to generate
    # (up to max_tokens) of the running and waiting sequences.
    running_sequences: int = 0
    waiting_sequences: int = 0
    tokens_per_second: float = 0.0
    sequence_tokens_per_second: float = 0.0
    queued_prompt_tokens: int = 0
    queued_decode_tokens: int = 0


def _demand(value: float, name: str, high: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise IntegrityError(f"malformed advert: {name} {value!r} is not a finite number >= 0")
    if value > high:
        raise IntegrityError(f"malformed advert: {name} {value!r} out of range (at most {high:g})")
    return value


def _count(value: int, name: str, high: int) -> int:
    if value > high:
        raise IntegrityError(f"malformed advert: {name} {value!r} out of range (at most {high})")
    return value


def _offer(m: advert_pb2.ModelOffer) -> ModelOffer:
    return ModelOffer(
        digest=Digest.parse(m.digest), name=m.name, tags=tuple(m.tags),
        max_batch_size=_count(m.max_batch_size, "max_batch_size", MAX_BATCH),
        items_per_second=_demand(m.items_per_second, "items_per_second", MAX_ITEMS_RATE),
        queue_depth=_count(m.queue_depth, "queue_depth", MAX_QUEUE_DEPTH),
        arrival_rate=_demand(m.arrival_rate, "arrival_rate", MAX_ITEMS_RATE),
        queue_wait=_demand(m.queue_wait_s, "queue_wait", MAX_QUEUE_WAIT),
        utilization=_demand(m.utilization, "utilization", 1.0),
        memory_bytes=m.memory_bytes, autoscaled=m.autoscaled,
        running_sequences=_count(m.running_sequences, "running_sequences", MAX_SEQUENCES),
        waiting_sequences=_count(m.waiting_sequences, "waiting_sequences", MAX_SEQUENCES),
        tokens_per_second=_demand(m.tokens_per_second, "tokens_per_second", MAX_TOKEN_RATE),
        sequence_tokens_per_second=_demand(
            m.sequence_tokens_per_second, "sequence_tokens_per_second", MAX_TOKEN_RATE),
        queued_prompt_tokens=_count(m.queued_prompt_tokens, "queued_prompt_tokens",
                                    MAX_QUEUED_TOKENS),
        queued_decode_tokens=_count(m.queued_decode_tokens, "queued_decode_tokens",
                                    MAX_QUEUED_TOKENS))


@dataclass(frozen=True, slots=True)
class MeshMember:
    """A WireGuard mesh member's part of its advert (checked by swarm.protocol._mesh)."""

    public_key: bytes
    # Underlay "ip:port" of its WireGuard socket; "" behind NAT.
    endpoint: str
    # Overlay IPv6 address (derived from public_key in the mesh prefix).
    address: str
    # gRPC port on the overlay address.
    grpc_port: int
    relay: bool = False


@dataclass(frozen=True, slots=True)
class Advert:
    peer_id: PeerId
    endpoints: tuple[str, ...]
    models: tuple[ModelOffer, ...]
    sequence: int
    # Unix seconds when the author made it.
    timestamp: float
    # Seconds receivers keep it without a newer one.
    ttl: float
    queue_depth: int = 0
    free_accelerator_memory: int = 0
    hardware: Hardware = field(default_factory=Hardware)
    price: Price = field(default_factory=Price)
    region: str = ""
    software_version: str = ""
    draining: bool = False
    # Registry versions (manifest digests) this node stores and serves to peers.
    stored: tuple[Digest, ...] = ()
    # Gossip addresses (multiaddrs) peers may connect to.
    p2p_addrs: tuple[str, ...] = ()
    # WireGuard mesh membership (None: not a member).
    mesh: MeshMember | None = None

    def offer(self, digest: Digest) -> ModelOffer | None:
        for model in self.models:
            if model.digest == digest:
                return model
        return None


def _to_proto(advert: Advert) -> advert_pb2.CapacityAdvert:
    hw = advert.hardware
    return advert_pb2.CapacityAdvert(
        peer_id=advert.peer_id.value,
        grpc_endpoints=list(advert.endpoints),
        models=[advert_pb2.ModelOffer(
            digest=str(m.digest), name=m.name, tags=list(m.tags), max_batch_size=m.max_batch_size,
            items_per_second=m.items_per_second, queue_depth=m.queue_depth,
            arrival_rate=m.arrival_rate, queue_wait_s=m.queue_wait, utilization=m.utilization,
            memory_bytes=m.memory_bytes, autoscaled=m.autoscaled,
            running_sequences=m.running_sequences, waiting_sequences=m.waiting_sequences,
            tokens_per_second=m.tokens_per_second,
            sequence_tokens_per_second=m.sequence_tokens_per_second,
            queued_prompt_tokens=m.queued_prompt_tokens,
            queued_decode_tokens=m.queued_decode_tokens) for m in advert.models],
        queue_depth=advert.queue_depth,
        free_accelerator_memory_bytes=advert.free_accelerator_memory,
        hardware=node_pb2.Hardware(device_kind=hw.device_kind, device_count=hw.device_count,
                                   memory_bytes=hw.memory_bytes, device_name=hw.device_name),
        price=node_pb2.Price(per_request_micros=advert.price.per_request_micros,
                             per_1k_items_micros=advert.price.per_1k_items_micros),
        region=advert.region,
        software_version=advert.software_version,
        sequence=advert.sequence,
        timestamp_unix_ms=round(advert.timestamp * 1000),
        ttl_ms=round(advert.ttl * 1000),
        draining=advert.draining,
        stored=[str(d) for d in advert.stored],
        p2p_addrs=list(advert.p2p_addrs),
        mesh=None if advert.mesh is None else advert_pb2.MeshMember(
            public_key=advert.mesh.public_key, endpoint=advert.mesh.endpoint,
            address=advert.mesh.address, grpc_port=advert.mesh.grpc_port,
            relay=advert.mesh.relay),
    )


def _from_proto(msg: advert_pb2.CapacityAdvert) -> Advert:
    try:
        return Advert(
            peer_id=PeerId(msg.peer_id),
            endpoints=tuple(msg.grpc_endpoints),
            models=tuple(_offer(m) for m in msg.models),
            sequence=msg.sequence,
            timestamp=msg.timestamp_unix_ms / 1000,
            ttl=msg.ttl_ms / 1000,
            queue_depth=_count(msg.queue_depth, "queue_depth", MAX_QUEUE_DEPTH),
            free_accelerator_memory=msg.free_accelerator_memory_bytes,
            hardware=Hardware(msg.hardware.device_kind, msg.hardware.device_count,
                              msg.hardware.memory_bytes, msg.hardware.device_name),
            price=Price(msg.price.per_request_micros, msg.price.per_1k_items_micros),
            region=msg.region,
            software_version=msg.software_version,
            draining=msg.draining,
            stored=tuple(Digest.parse(d) for d in msg.stored),
            p2p_addrs=tuple(msg.p2p_addrs),
            mesh=MeshMember(msg.mesh.public_key, msg.mesh.endpoint, msg.mesh.address,
                            msg.mesh.grpc_port, msg.mesh.relay) if msg.HasField("mesh") else None,
        )
    except ValueError as exc:
        raise IntegrityError(f"malformed advert: {exc}") from exc


def encode(advert: Advert, identity: Identity) -> bytes:
    """Sign `advert` with its author's identity; returns SignedAdvert bytes."""
    if advert.peer_id != identity.peer_id:
        raise ValueError("an advert is signed by its own peer")
    payload = _to_proto(advert).SerializeToString(deterministic=True)
    return seal(advert_pb2.SignedAdvert, ADVERT_DOMAIN, payload, identity)


def _author_key(msg: advert_pb2.CapacityAdvert) -> bytes:
    try:
        return public_key_of_peer(PeerId(msg.peer_id))
    except InvalidReferenceError:
        raise InvalidReferenceError(f"author {msg.peer_id!r} is not an Ed25519 peer id") from None


def decode(data: bytes) -> Advert:
    """Parse and verify SignedAdvert bytes; raises IntegrityError on anything wrong."""
    msg, _ = open_envelope(data, advert_pb2.SignedAdvert, advert_pb2.CapacityAdvert,
                           domain=ADVERT_DOMAIN, max_bytes=MAX_ADVERT_BYTES, what="advert",
                           key=_author_key)
    return _from_proto(msg)
