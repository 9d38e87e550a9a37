"""Issue 14: the demand signal in adverts (arrival rate, queue wait, utilization, memory)
is hostile input: a forged NaN, a negative or an absurd value would steer every node's
autoscaler. decode() refuses such an advert as a whole with IntegrityError."""

from __future__ import annotations

import math

import pytest

from swarm._errors import IntegrityError
from swarm._types import Digest
from swarm.protocol import Advert, Identity, ModelOffer
from swarm.protocol._advert import decode, encode
from tests.adversarial.support import signed_offer

ME = Identity.from_seed(b"\x07" * 32)


def _signed(**offer: float) -> bytes:
    return signed_offer(ME, **offer)


def test_honest_demand_round_trips() -> None:
    offer = ModelOffer(Digest.of(b"m"), "acme/m", arrival_rate=12.5, queue_wait=0.25,
                       utilization=0.8, memory_bytes=1 << 20)
    advert = Advert(ME.peer_id, ("127.0.0.1:1",), (offer,), 1, 1.0, 10.0)
    assert decode(encode(advert, ME)).models == (offer,)


@pytest.mark.parametrize("field", ["arrival_rate", "queue_wait_s", "utilization"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_non_finite_or_negative_demand_is_refused(field: str, value: float) -> None:
    with pytest.raises(IntegrityError, match=field.removesuffix("_s")):
        decode(_signed(**{field: value}))


@pytest.mark.parametrize(("field", "value"), [
    ("utilization", 1.5),          # a fraction of the interval
    ("arrival_rate", 1e12),        # beyond any node
    ("queue_wait_s", 1e7),         # longer than any deadline
])
def test_out_of_range_demand_is_refused(field: str, value: float) -> None:
    with pytest.raises(IntegrityError, match="out of range"):
        decode(_signed(**{field: value}))



def test_demand_claimed_under_free_identities_moves_no_capacity_with_staking() -> None:
    """Sybil demand: 50 fresh identities advertise a backlogged model nobody asks for. Each
    advert is capped, but 50 of them still make an idle node load it; with staking, only
    peers eligible on the node's ledger count, and the idle node stays idle."""
    import dataclasses
    import random

    from swarm.autoscale import Decision, SelfState, decide
    from tests.autoscale.test_decide import CONFIG, HOT, advert, me, offer, view_of

    honest = advert(1, (offer(load=0.1),), stored=(HOT,))  # one staked, quiet provider
    view = view_of(honest, *(advert(500 + i, (offer(load=4.0),)) for i in range(50)))

    def loads(state: SelfState) -> list[str]:
        decision, rng, done = Decision((), {}), random.Random(0), []
        for t in range(0, 121, 5):
            state = dataclasses.replace(state, now=float(t), trends=decision.trends)
            decision = decide(view, state, CONFIG, rng)
            done += [a.name for a in decision.actions if a.digest == HOT]
        return done

    assert loads(me()) != [], "without a stake rule the flood moves capacity (the attack)"
    staked = {honest.peer_id}
    assert loads(dataclasses.replace(me(), counts=staked.__contains__)) == []
