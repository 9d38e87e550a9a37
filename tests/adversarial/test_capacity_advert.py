"""The capacity every offer states (max batch size, items/s, queue depth) is hostile input:
schedulers score providers by it and autoscalers divide by it. A forged NaN or infinite
speed would make a provider look instant (or break the ordering of every candidate); a
batch of 2^32-1 would make a generative provider look as if it always had free slots.
decode() refuses such an advert as a whole with IntegrityError."""

from __future__ import annotations

import math

import pytest

from swarm._errors import IntegrityError
from swarm._proto.swarm.v1 import advert_pb2
from swarm._types import Digest
from swarm.protocol import ADVERT_DOMAIN, Advert, Identity, ModelOffer, seal
from swarm.protocol._advert import decode, encode
from tests.adversarial.support import signed_offer

ME = Identity.from_seed(b"\x09" * 32)


def test_honest_capacity_round_trips() -> None:
    offer = ModelOffer(Digest.of(b"m"), "acme/m", max_batch_size=64, items_per_second=1234.5,
                       queue_depth=17)
    advert = Advert(ME.peer_id, ("127.0.0.1:1",), (offer,), 1, 1.0, 10.0, queue_depth=17)
    decoded = decode(encode(advert, ME))
    assert decoded.models == (offer,)
    assert decoded.queue_depth == 17


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_non_finite_or_negative_speed_is_refused(value: float) -> None:
    with pytest.raises(IntegrityError, match="items_per_second"):
        decode(signed_offer(ME, items_per_second=value))


@pytest.mark.parametrize(("field", "value"), [
    ("items_per_second", 1e12),          # beyond any accelerator
    ("max_batch_size", (1 << 32) - 1),   # "always a free slot"
    ("queue_depth", (1 << 32) - 1),
])
def test_absurd_capacity_is_refused(field: str, value: float) -> None:
    with pytest.raises(IntegrityError, match=f"{field}.*out of range"):
        decode(signed_offer(ME, **{field: value}))


def test_an_absurd_node_queue_depth_is_refused() -> None:
    msg = advert_pb2.CapacityAdvert(peer_id=ME.peer_id.value, sequence=1, timestamp_unix_ms=1,
                                    ttl_ms=1000, queue_depth=(1 << 32) - 1)
    wire = seal(advert_pb2.SignedAdvert, ADVERT_DOMAIN, msg.SerializeToString(deterministic=True),
                ME)
    with pytest.raises(IntegrityError, match=r"queue_depth.*out of range"):
        decode(wire)
