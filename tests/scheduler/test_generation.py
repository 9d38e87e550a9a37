"""Routing generation by tokens (issue 15): estimate_generation and choose with a TokenCost,
tested directly on frozen views with injected time and RNG."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm._types import Digest
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, admit
from swarm.scheduler import (
    GenerationPolicy,
    Observations,
    Request,
    SchedulerConfig,
    TokenCost,
    choose,
    estimate_generation,
    prompt_tokens_of,
)
from swarm.scheduler._generation import typical_generation
from swarm.scheduler._observations import MAX_STREAM_RATE, PeerStats

LLM = Digest.of(b"llm")
WALL = 1_795_000_000.0
PEERS = [Identity.from_seed(bytes([i + 40]) * 32).peer_id for i in range(6)]
CONFIG = SchedulerConfig(spread_pool=1, explore=0.0)


def offer(*, slots: int = 4, running: int = 0, waiting: int = 0, rate: float = 10.0,
          prompt: int = 0, decode: int = 0) -> ModelOffer:
    return ModelOffer(LLM, "builtin/llm", max_batch_size=slots,
                      queue_depth=running + waiting, items_per_second=rate * running,
                      running_sequences=running, waiting_sequences=waiting,
                      tokens_per_second=rate * running, sequence_tokens_per_second=rate,
                      queued_prompt_tokens=prompt, queued_decode_tokens=decode)


def view_of(*offers: ModelOffer, at: float = 0.0) -> PeerView:
    view = PeerView()
    for i, o in enumerate(offers):
        advert = Advert(PEERS[i], ("10.0.0.1:1",), (o,), sequence=1, timestamp=WALL, ttl=60.0)
        view, verdict = admit(view, advert, now=at, wall=WALL)
        assert verdict.ok
    return view


def estimate(o: ModelOffer, cost: TokenCost, *, now: float = 0.0,
             peer: PeerStats | None = None, rtt: float = 0.0):  # type: ignore[no-untyped-def]
    view = view_of(o)
    entry = view.entries[PEERS[0]]
    return estimate_generation(entry, peer or PeerStats(), LLM, cost, now, CONFIG, (rtt, 10.0))


# ------------------------------------------------------------------ the estimate, by table

P16 = GenerationPolicy().prefill_speedup


@pytest.mark.parametrize(("case", "o", "cost", "now", "wait"), [
    # a free slot: nobody to wait for, however much work the others have left
    ("idle", offer(), TokenCost(160, 100), 0.0, 0.0),
    ("free slot", offer(running=3, decode=3000), TokenCost(160, 100), 0.0, 0.0),
    # every slot taken, nobody waiting: the shortest of 4 remainders, Q / (S^2 r)
    ("full", offer(running=4, decode=400), TokenCost(160, 100), 0.0, 400 / (4 * 4 * 10)),
    # a deep queue: (n - S + 1) / n of the backlog at the full batch's rate
    ("deep", offer(running=4, waiting=8, decode=1200), TokenCost(160, 100), 0.0,
     9 / 12 * 1200 / 40),
    # queued prompts count prefill_speedup times less than decode tokens
    ("prompts", offer(running=4, waiting=4, prompt=int(800 * P16)), TokenCost(160, 100), 0.0,
     5 / 8 * 800 / 40),
    # 5 s after the advert, 4 x 10 tokens/s have drained 200 of 400: two sequences left
    ("drained", offer(running=4, decode=400), TokenCost(160, 100), 5.0, 0.0),
])
def test_estimate_table(case: str, o: ModelOffer, cost: TokenCost, now: float,
                        wait: float) -> None:
    est = estimate(o, cost, now=now, rtt=0.02)
    prefill = 160 / (P16 * 10)
    assert est.first_token == pytest.approx(0.02 + wait + prefill), case
    assert est.latency == pytest.approx(est.first_token + 99 / 10), case


def test_without_max_tokens_the_policy_s_expected_decode_counts() -> None:
    est = estimate(offer(), TokenCost(0))
    assert est.latency == pytest.approx((GenerationPolicy().expected_decode - 1) / 10)


def test_own_streams_since_the_advert_fill_slots() -> None:
    peer = PeerStats(streaming=((1.0, 100.0, math.inf),) * 2)  # sent after the advert (at 0)
    est = estimate(offer(slots=4, running=3, decode=300), TokenCost(0, 10), now=1.0, peer=peer)
    # 3 advertised (drained a little) + 2 x in_flight_weight 2 = ~7 ahead of 4 slots
    assert est.ahead == pytest.approx(3 * (300 - 30) / 300 + 4)
    assert est.first_token > 0
    assert estimate(offer(slots=4, running=3, decode=300), TokenCost(0, 10),
                    now=1.0).first_token == 0.0


def test_an_advert_that_hides_our_streams_does_not_hide_them_from_us() -> None:
    """Attacker: a provider advertises itself idle while streams of ours sent before that
    advert are still open there: they are a floor under its sequences and work."""
    obs = Observations()
    for _ in range(6):
        obs.start_stream(PEERS[0], -1.0, 100.0)  # before the advert (received at 0)
    est = estimate(offer(slots=4, rate=10.0), TokenCost(0, 10), now=0.0, peer=obs.get(PEERS[0]))
    assert est.ahead == 6
    # 6 ahead of 4 slots, 6 x (100 - 10 decoded since) tokens: (6 - 3) / 6 * 540 / 40
    assert est.first_token == pytest.approx(3 / 6 * 540 / 40)


def test_a_stream_overdue_for_its_first_token_makes_its_provider_look_that_slow() -> None:
    obs = Observations()
    # Sent before the advert (received at 0), which shows them: 2 sequences, 4 slots.
    obs.start_stream(PEERS[0], -1.0, 10.0, first_token=2.5)  # due at 1.5
    obs.start_stream(PEERS[0], -0.5, 10.0, first_token=2.5)  # due at 2.0
    late = estimate(offer(running=2, decode=20), TokenCost(0, 10), now=9.0,
                    peer=obs.get(PEERS[0]))
    assert late.first_token == pytest.approx(7.5)  # the most overdue one: 9 - 1.5
    obs.record_first_token(PEERS[0], -1.0, 10.0, delay=10.0, expected=2.5, now=9.0)
    assert obs.get(PEERS[0]).streaming[0] == (-1.0, 10.0, math.inf)
    s = obs.get(PEERS[0])
    assert s.stream_surprise == pytest.approx(7.5)  # the first sample is the EWMA
    later = estimate(offer(running=2, decode=20), TokenCost(0, 10), now=9.0, peer=s)
    assert later.first_token == pytest.approx(7.5)  # the surprise (the other: 7 overdue)
    obs.finish_stream(PEERS[0], -1.0, 10.0)
    obs.finish_stream(PEERS[0], -0.5, 10.0)
    faded = estimate(offer(), TokenCost(0, 10), now=19.0, peer=obs.get(PEERS[0]))
    assert faded.first_token == pytest.approx(7.5 / 32)  # 10 s: five half-lives of 2 s


def test_measured_rate_replaces_an_advertised_one_as_samples_come() -> None:
    liar = offer(rate=1000.0)
    obs = Observations()
    fast = estimate(liar, TokenCost(10, 100)).latency
    for t in range(5):
        obs.record_stream(PEERS[0], LLM, tokens=101, decode_seconds=20.0, now=float(t))
    slow = estimate(liar, TokenCost(10, 100), now=5.0, peer=obs.get(PEERS[0])).latency
    assert fast < 0.2
    assert slow > 10 * fast
    assert obs.get(PEERS[0]).stream_rate_for(LLM)[0] == pytest.approx(5.0)


def test_typical_rate_is_the_median_measured_else_advertised_else_default() -> None:
    view = view_of(offer(rate=4.0), offer(rate=8.0), offer(rate=30.0))
    entries = view.providers(LLM)
    obs = Observations()
    assert typical_generation(entries, obs.snapshot(), LLM, CONFIG)[1] == 8.0
    obs.record_stream(PEERS[0], LLM, tokens=11, decode_seconds=2.0, now=0.0)
    assert typical_generation(entries, obs.snapshot(), LLM, CONFIG)[1] == 5.0
    bare = view_of(offer(rate=0.0))
    assert typical_generation(bare.providers(LLM), Observations().snapshot(), LLM,
                              CONFIG)[1] == GenerationPolicy().default_rate


# ------------------------------------------------------------------ choose by tokens


def test_tokens_not_requests_decide() -> None:
    """A: 2 requests, but long ones filling both of its slots; B: 3 short ones in 8 slots.
    By requests (queue depth) A looks emptier; by tokens B starts this request at once."""
    same_speed = {"items_per_second": 30.0, "tokens_per_second": 30.0}
    view = view_of(replace(offer(slots=2, running=2, decode=2 * 240), **same_speed),
                   replace(offer(slots=8, running=3, decode=3 * 16), **same_speed))
    by_requests = choose(view, Request(LLM), Observations(), random.Random(0), 0.0, CONFIG)
    by_tokens = choose(view, Request(LLM, generation=TokenCost(50, 200)), Observations(),
                       random.Random(0), 0.0, CONFIG)
    assert by_requests[0].peer == PEERS[0]
    assert by_tokens[0].peer == PEERS[1]
    assert by_tokens[0].queue == pytest.approx(3)
    assert by_tokens[1].expected_latency > by_tokens[0].expected_latency + 5


def test_a_fast_provider_wins_long_requests_and_a_free_one_wins_short_ones() -> None:
    """Fast (40 tok/s per sequence) but full with a short queue, vs slow (10 tok/s) and idle:
    a short answer finishes sooner at the idle one, a long one at the fast one."""
    view = view_of(offer(slots=4, running=4, waiting=2, rate=40.0, decode=6 * 100),
                   offer(slots=4, rate=10.0))

    def first(max_tokens: int) -> int:
        c = choose(view, Request(LLM, generation=TokenCost(20, max_tokens)), Observations(),
                   random.Random(0), 0.0, CONFIG)
        return PEERS.index(c[0].peer)

    assert first(16) == 1
    assert first(256) == 0


def test_generation_requests_explore_too() -> None:
    view = view_of(offer(), offer())
    obs = Observations()
    for t in range(3):
        obs.record_stream(PEERS[0], LLM, tokens=50, decode_seconds=4.9, now=float(t))
    config = SchedulerConfig(spread_pool=1, explore=1.0)
    picked = choose(view, Request(LLM, generation=TokenCost(10, 50), explore=True), obs,
                    random.Random(0), 3.0, config)
    assert picked[0].peer == PEERS[1]
    assert picked[0].explored


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize(("text", "messages", "tokens"), [
    ("", 0, 1),
    ("abcd", 0, 1),
    ("The capital of France is", 0, 6),
    ("é" * 4, 0, 2),  # bytes, not characters
    ("Hi", 2, 9),
])
def test_prompt_tokens_of(text: str, messages: int, tokens: int) -> None:
    assert prompt_tokens_of(text, messages) == tokens


def test_token_cost_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        TokenCost(-1)
    with pytest.raises(ValueError, match="max_tokens"):
        TokenCost(1, 0)
    with pytest.raises(ValueError, match="expected_decode"):
        GenerationPolicy(expected_decode=0)


def test_stream_samples_a_provider_controls_are_bounded() -> None:
    """A provider that bursts all its tokens at once (0 s between first and last) is taken
    at MAX_STREAM_RATE, not infinity; NaN and one-token samples teach nothing."""
    obs = Observations()
    obs.record_stream(PEERS[0], LLM, tokens=100, decode_seconds=0.0, now=0.0)
    assert obs.get(PEERS[0]).stream_rate_for(LLM)[0] == MAX_STREAM_RATE
    obs.record_stream(PEERS[1], LLM, tokens=100, decode_seconds=math.nan, now=0.0)
    obs.record_stream(PEERS[1], LLM, tokens=1, decode_seconds=1.0, now=0.0)
    assert obs.get(PEERS[1]).stream_rate_for(LLM) == (None, -math.inf, 0)


def test_streams_in_flight_are_tracked_and_forgotten_by_start() -> None:
    obs = Observations()
    obs.start_stream(PEERS[0], 1.0, 50.0)
    obs.start_stream(PEERS[0], 2.0, 70.0)
    obs.finish_stream(PEERS[0], 1.0, 50.0)  # streams end out of order
    assert obs.get(PEERS[0]).streaming == ((2.0, 70.0, math.inf),)
    obs.finish_stream(PEERS[0], 9.0, 1.0)  # unknown: nothing happens
    obs.finish_stream(PEERS[0], 2.0, 70.0)
    assert obs.get(PEERS[0]).streaming == ()


# ------------------------------------------------------------------ properties


@st.composite
def loads(draw: st.DrawFn) -> ModelOffer:
    return offer(slots=draw(st.integers(1, 64)), running=draw(st.integers(0, 64)),
                 waiting=draw(st.integers(0, 300)),
                 rate=draw(st.floats(0.0, 1e4, allow_nan=False)),
                 prompt=draw(st.integers(0, 1 << 30)), decode=draw(st.integers(0, 1 << 30)))


@settings(max_examples=200, deadline=None)
@given(loads(), st.integers(0, 4096), st.integers(1, 4096), st.floats(0.0, 100.0),
       st.integers(1, 50), st.integers(1, 1000))
def test_more_work_ahead_or_asked_never_makes_it_sooner(
        o: ModelOffer, prompt: int, max_tokens: int, now: float, more: int,
        extra_tokens: int) -> None:
    base = estimate(o, TokenCost(prompt, max_tokens), now=now)
    assert math.isfinite(base.latency)
    assert 0 <= base.first_token <= base.latency
    busier = replace(o, waiting_sequences=o.waiting_sequences + more,
                     queued_decode_tokens=o.queued_decode_tokens + more * extra_tokens)
    assert estimate(busier, TokenCost(prompt, max_tokens), now=now).latency >= base.latency - 1e-9
    longer = estimate(o, TokenCost(prompt + extra_tokens, max_tokens + extra_tokens), now=now)
    assert longer.latency >= base.latency - 1e-9
    later = estimate(o, TokenCost(prompt, max_tokens), now=now + more)
    assert later.latency <= base.latency + 1e-9  # adverts age towards an emptier provider


@settings(max_examples=150, deadline=None)
@given(loads(), st.floats(0.1, 1e4), st.floats(1.01, 100.0), st.integers(1, 4096))
def test_a_faster_provider_is_never_estimated_slower(o: ModelOffer, rate: float, factor: float,
                                                     max_tokens: int) -> None:
    slow = replace(o, sequence_tokens_per_second=rate)
    fast = replace(o, sequence_tokens_per_second=rate * factor)
    cost = TokenCost(100, max_tokens)
    assert estimate(fast, cost).latency <= estimate(slow, cost).latency + 1e-9
