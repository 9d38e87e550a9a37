"""Issue 15: the generation load in adverts (running/waiting sequences, tokens/s, queued
tokens) is hostile input: every client's scheduler routes on it, so a forged NaN, a
negative or an absurd value must not reach the estimates. decode() refuses such an advert
as a whole with IntegrityError, as it does a forged demand signal."""

from __future__ import annotations

import math

import pytest

from swarm._errors import IntegrityError
from swarm._types import Digest
from swarm.protocol import Advert, Identity, ModelOffer
from swarm.protocol._advert import decode, encode
from tests.adversarial.support import signed_offer

ME = Identity.from_seed(b"\x08" * 32)


def _signed(**offer: float) -> bytes:
    return signed_offer(ME, **offer)


def test_honest_generation_load_round_trips() -> None:
    offer = ModelOffer(Digest.of(b"m"), "acme/m", running_sequences=7, waiting_sequences=3,
                       tokens_per_second=120.5, sequence_tokens_per_second=17.25,
                       queued_prompt_tokens=900, queued_decode_tokens=1500)
    advert = Advert(ME.peer_id, ("127.0.0.1:1",), (offer,), 1, 1.0, 10.0)
    assert decode(encode(advert, ME)).models == (offer,)


def test_an_advert_without_generation_fields_reads_as_zero() -> None:
    offer = decode(_signed()).models[0]
    assert (offer.running_sequences, offer.waiting_sequences, offer.tokens_per_second,
            offer.sequence_tokens_per_second, offer.queued_prompt_tokens,
            offer.queued_decode_tokens) == (0, 0, 0.0, 0.0, 0, 0)


@pytest.mark.parametrize("field", ["tokens_per_second", "sequence_tokens_per_second"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_non_finite_or_negative_rates_are_refused(field: str, value: float) -> None:
    with pytest.raises(IntegrityError, match=field):
        decode(_signed(**{field: value}))


@pytest.mark.parametrize(("field", "value"), [
    ("tokens_per_second", 1e12),           # beyond any accelerator
    ("sequence_tokens_per_second", 1e12),
    ("running_sequences", 1 << 31),        # more sequences than any KV cache holds
    ("waiting_sequences", (1 << 32) - 1),
    ("queued_prompt_tokens", 1 << 63),     # an int64 overflow waiting to happen downstream
    ("queued_decode_tokens", (1 << 64) - 1),
])
def test_absurd_generation_load_is_refused(field: str, value: float) -> None:
    with pytest.raises(IntegrityError, match=f"{field}.*out of range"):
        decode(_signed(**{field: value}))
