"""Issue 14: choose() spreads load over equal providers, explores on first attempts only, and
learns per model and from the queue depth providers report in their answers."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from swarm._types import Digest, PeerId
from swarm.protocol import PeerView
from swarm.scheduler import (
    Failure,
    ObservationConfig,
    Observations,
    Preference,
    Request,
    SchedulerConfig,
    choose,
)
from tests.scheduler.test_policy import MODEL, OTHER_MODEL, PEERS, advert, known, view_of

ONLY_BEST = SchedulerConfig(spread_pool=1, explore=0.0)


def measured(*peers: int, service: float = 0.01, rtt: float = 0.001, now: float = 0.0,
             samples: int = 5, digest: Digest = MODEL) -> Observations:
    obs = known(*peers, rtt=rtt)
    for i in peers:
        for _ in range(samples):
            obs.record_success(PEERS[i], rtt + service, items=1, now=now, queued=0.0,
                               service=service, digest=digest)
    return obs


def firsts(view: PeerView, request: Request, obs: Observations, config: SchedulerConfig, n: int,
           seed: int = 0, now: float = 0.0) -> Counter[PeerId]:
    rng = random.Random(seed)
    return Counter(choose(view, request, obs, rng, now, config)[0].peer for _ in range(n))


# ------------------------------------------------------------------ spreading


@pytest.mark.parametrize("seed", range(10))
def test_equal_providers_share_first_picks_evenly(seed: int) -> None:
    view = view_of(*(advert(i) for i in range(4)))
    got = firsts(view, Request(MODEL), measured(0, 1, 2, 3), SchedulerConfig(explore=0), 800, seed)
    counts = [got[PEERS[i]] for i in range(4)]
    assert max(counts) / min(counts) <= 1.5, counts


@pytest.mark.parametrize("seed", range(4))
def test_equal_providers_measured_with_noise_share_within_1_5x_and_none_idles(seed: int) -> None:
    """A closed loop as in the demo: each answer is a noisy sample (lognormal, sigma 0.5) of
    the same service time; one unlucky sample must not leave a provider idle."""
    view = view_of(*(advert(i, ttl=600) for i in range(4)))
    obs = known(0, 1, 2, 3, rtt=0.001)
    rng, noise = random.Random(seed), random.Random(1000 + seed)
    config = SchedulerConfig()
    counts: Counter[PeerId] = Counter()
    last = dict.fromkeys(PEERS[:4], 0.0)
    longest = 0.0
    now = 0.0
    for _ in range(1200):  # 60 s at 20 requests/s, one at a time
        now += 0.05
        pick = choose(view, Request(MODEL, explore=True), obs, rng, now, config)[0]
        service = 0.01 * noise.lognormvariate(0.0, 0.5)
        obs.start(pick.peer, now)
        obs.finish(pick.peer, now)
        obs.record_success(pick.peer, 0.001 + service, items=1, now=now, queued=0.0,
                           service=service, expected=pick.expected_latency, digest=MODEL)
        counts[pick.peer] += 1
        longest = max(longest, now - last[pick.peer])
        last[pick.peer] = now
    shares = [counts[p] for p in PEERS[:4]]
    assert max(shares) / min(shares) <= 1.5, shares
    # explore_after (5 s) and then a first attempt that explores (5%, so ~1 s at 20/s).
    assert longest <= 8.0


def test_a_clearly_better_provider_gets_more_but_not_all() -> None:
    # 0 is 20% faster than 1 and 2: drawn exp(ln 1.2 / ln 1.5) = 1.57 times as often as each.
    view = view_of(advert(0, ips=120), advert(1, ips=100), advert(2, ips=100))
    got = firsts(view, Request(MODEL), known(0, 1, 2, rtt=0.0), SchedulerConfig(explore=0), 4000, 3)
    w = 1.2 ** (-1 / math.log(1.5))
    assert got[PEERS[0]] / 4000 == pytest.approx(1 / (1 + 2 * w), abs=0.03)
    assert got[PEERS[1]] / 4000 == pytest.approx(w / (1 + 2 * w), abs=0.03)


def test_one_slow_answer_barely_moves_a_well_measured_provider() -> None:
    obs = measured(0, 1, service=0.010)
    obs.record_success(PEERS[0], 0.501, items=1, now=0, queued=0.0, service=0.5, digest=MODEL)
    view = view_of(advert(0), advert(1))
    got = {c.peer: c.expected_latency for c in choose(view, Request(MODEL), obs, random.Random(0),
                                                      0.0, ONLY_BEST)}
    # The median of the last 5 samples ignores the outlier.
    assert got[PEERS[0]] == pytest.approx(got[PEERS[1]])


def test_a_single_sample_counts_a_quarter_against_the_typical_provider() -> None:
    obs = measured(0, 1, 2, service=0.010)
    obs.record_rtt(PEERS[3], 0.001, now=0)
    obs.record_success(PEERS[3], 0.081, items=1, now=0, queued=0.0, service=0.080, digest=MODEL)
    view = view_of(*(advert(i, ips=0) for i in range(4)))
    got = {c.peer: c.expected_latency for c in choose(view, Request(MODEL), obs, random.Random(0),
                                                      0.0, ONLY_BEST)}
    # Typical 10 ms; one sample of 80 ms weighs 1 / (1 + 3): 27.5 ms, plus 1 ms RTT.
    assert got[PEERS[3]] == pytest.approx(0.001 + 0.25 * 0.080 + 0.75 * 0.010)


def test_service_time_is_learnt_per_model() -> None:
    # Peer 0 serves a heavy model (50 ms) and a light one (5 ms); its answers for the heavy
    # one must not make it look slow for the light one.
    obs = measured(0, 1, service=0.005, digest=MODEL)
    for _ in range(5):
        obs.record_success(PEERS[0], 0.051, items=1, now=0, queued=0.0, service=0.050,
                           digest=OTHER_MODEL)
    view = view_of(advert(0), advert(1))
    got = {c.peer: c.expected_latency for c in choose(view, Request(MODEL), obs, random.Random(0),
                                                      0.0, ONLY_BEST)}
    assert got[PEERS[0]] == pytest.approx(got[PEERS[1]])
    assert obs.get(PEERS[0]).service_for(OTHER_MODEL)[0] == pytest.approx(0.050)
    assert obs.get(PEERS[1]).service_for(OTHER_MODEL) == (None, float("-inf"), 0)


# ------------------------------------------------------------------ exploration


def test_a_share_of_first_attempts_explores_an_unmeasured_contender() -> None:
    # 0 is measured at 10 ms; 1 never answered us, and advertises 12.5 ms: a contender.
    view = view_of(advert(0), advert(1, ips=80))
    obs = measured(0)
    config = SchedulerConfig(spread_pool=1, explore=0.05)
    rng = random.Random(5)
    picks = [choose(view, Request(MODEL, explore=True), obs, rng, 0.0, config)[0]
             for _ in range(4000)]
    explored = [c for c in picks if c.explored]
    assert 0.04 < len(explored) / 4000 < 0.06
    assert {c.peer for c in explored} == {PEERS[1]}
    assert all(c.peer == PEERS[0] for c in picks if not c.explored)


def test_retries_and_hedges_never_explore() -> None:
    view = view_of(advert(0), advert(1, ips=80), advert(2, ips=80))
    obs = measured(0)
    config = SchedulerConfig(spread_pool=1, explore=1.0)
    for seed in range(200):
        rng = random.Random(seed)
        got = choose(view, Request(MODEL, exclude=frozenset({PEERS[2]})), obs, rng, 0.0, config)
        assert got[0].peer == PEERS[0]
        assert not any(c.explored for c in got)


def test_only_unmeasured_or_stale_idle_contenders_are_explored() -> None:
    view = view_of(advert(0, ttl=600), advert(1, ttl=600), advert(2, ttl=600),
                   advert(3, ips=20, ttl=600))
    obs = measured(0, 1, 2, now=0.0)
    config = SchedulerConfig(spread_pool=1, explore=1.0, explore_after=5.0)

    def explored(now: float) -> set[PeerId]:
        rng = random.Random(0)
        return {c.peer for _ in range(300)
                if (c := choose(view, Request(MODEL, explore=True), obs, rng, now, config)[0]).explored}

    # At 1 s every measured provider is fresh; 3 was never measured but advertises 5x slower
    # than the best: not a contender. Nothing to explore.
    assert explored(1.0) == set()
    # Peer 2 answered at 8 s, peer 1 has a request in flight: only 0 is stale and idle at 9 s.
    obs.record_success(PEERS[2], 0.011, items=1, now=8.0, queued=0.0, service=0.01, digest=MODEL)
    obs.start(PEERS[1], now=8.5)
    assert explored(9.0) == {PEERS[0]}
    obs.finish(PEERS[1], now=9.0)
    assert explored(9.0) == {PEERS[0], PEERS[1]}


def test_a_stale_provider_measured_slow_is_explored_by_its_advert() -> None:
    view = view_of(advert(0, ttl=600), advert(1, ttl=600))
    obs = measured(0, 1, service=0.01)
    for _ in range(5):  # peer 1 was slow for a while at t = 0
        obs.record_success(PEERS[1], 0.2, items=1, now=0, queued=0.0, service=0.2, digest=MODEL)
    for t in range(1, 7):  # peer 0 keeps answering; 1 gets nothing
        obs.record_success(PEERS[0], 0.011, items=1, now=t, queued=0.0, service=0.01,
                           digest=MODEL)
    config = SchedulerConfig(spread_pool=1, explore=1.0, explore_after=5.0)
    got = choose(view, Request(MODEL, explore=True), obs, random.Random(0), 6.0, config)[0]
    assert got.peer == PEERS[1]
    assert got.explored


def test_exploration_respects_the_price_weight_and_the_deadline() -> None:
    view = view_of(advert(0, price=1), advert(1, price=100))
    obs = measured(0)
    config = SchedulerConfig(spread_pool=1, explore=1.0)
    cheap = Request(MODEL, preference=Preference.PRICE, explore=True)
    assert {choose(view, cheap, obs, random.Random(s), 0.0, config)[0].peer
            for s in range(50)} == {PEERS[0]}
    # 1 never answered: its prior (typical 10 ms + 1 ms) misses a 5 ms deadline.
    tight = Request(MODEL, deadline=0.005, explore=True)
    view = view_of(advert(0), advert(1, ips=0))
    assert not choose(view, tight, obs, random.Random(0), 0.0, config)[0].explored


def test_exploration_skips_an_open_circuit() -> None:
    obs = measured(0)
    obs = Observations(ObservationConfig(failure_threshold=1))
    obs.record_failure(PEERS[1], Failure.UNAVAILABLE, now=0)
    view = view_of(advert(0), advert(1))
    config = SchedulerConfig(spread_pool=1, explore=1.0)
    assert {choose(view, Request(MODEL, explore=True), obs, random.Random(s), 0.1, config)[0].peer
            for s in range(50)} == {PEERS[0]}


@pytest.mark.parametrize("bad", [{"explore": -0.1}, {"explore": 1.5}, {"explore_after": -1},
                                 {"spread_tie": 1.0}, {"service_prior": -1}])
def test_spread_and_exploration_config_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SchedulerConfig(**bad)


# ------------------------------------------------------------------ queue depth in answers


def test_a_reported_queue_depth_fresher_than_the_advert_replaces_it() -> None:
    view = view_of(advert(0, ips=100, queue=0, ttl=600), advert(1, ips=100, ttl=600))
    obs = known(0, 1, rtt=0.0)
    obs.record_success(PEERS[0], 0.01, items=1, now=1.0, depth=20)
    got = {c.peer: c for c in choose(view, Request(MODEL), obs, random.Random(0), 1.0, ONLY_BEST)}
    assert got[PEERS[0]].queue == pytest.approx(20)
    assert got[PEERS[0]].expected_latency == pytest.approx(21 * 0.01)
    # It drains at the provider's speed: 0.1 s later, 10 fewer ahead.
    got = {c.peer: c for c in choose(view, Request(MODEL), obs, random.Random(0), 1.1, ONLY_BEST)}
    assert got[PEERS[0]].queue == pytest.approx(10)


def test_our_own_requests_in_a_reported_queue_count_once() -> None:
    view = view_of(advert(0, ips=100, ttl=600))
    obs = known(0, rtt=0.0)
    for _ in range(3):
        obs.start(PEERS[0], now=0.5)
    obs.record_success(PEERS[0], 0.01, items=1, now=1.0, depth=3)  # the three are ours
    got = choose(view, Request(MODEL), obs, random.Random(0), 1.0,
                 SchedulerConfig(in_flight_weight=1.0, spread_pool=1))[0]
    assert got.queue == pytest.approx(3)


def test_a_hostile_depth_only_hurts_its_sender() -> None:
    obs = known(0, 1, rtt=0.0)
    obs.record_success(PEERS[0], 0.01, items=1, now=1.0, depth=2**62)
    obs.record_success(PEERS[1], 0.01, items=1, now=1.0, depth=-5)
    assert obs.get(PEERS[1]).depth == 0
    view = view_of(advert(0, ttl=600), advert(1, ttl=600))
    got = choose(view, Request(MODEL), obs, random.Random(0), 1.0, SchedulerConfig())
    assert got[0].peer == PEERS[1]
