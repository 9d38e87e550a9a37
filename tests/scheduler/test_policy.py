"""choose(): filters, scoring, power-of-two-choices, determinism, and why nothing qualifies."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from swarm._errors import NoProviderError
from swarm._types import Digest, PeerId
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, Price, admit
from swarm.scheduler import (
    Candidate,
    Failure,
    ObservationConfig,
    Observations,
    Preference,
    Request,
    SchedulerConfig,
    choose,
)

MODEL = Digest.of(b"model")
OTHER_MODEL = Digest.of(b"other")
WALL = 1_795_000_000.0
PEERS = [Identity.from_seed(bytes([i + 1]) * 32).peer_id for i in range(8)]
NO_SPREAD = SchedulerConfig(spread_pool=1)


def advert(i: int, *, ips: float = 100.0, queue: int = 0, price: int = 0, draining: bool = False,
           digest: Digest = MODEL, endpoints: tuple[str, ...] = ("10.0.0.1:8001",),
           ttl: float = 30.0) -> Advert:
    return Advert(
        peer_id=PEERS[i], endpoints=endpoints,
        models=(ModelOffer(digest, "org/model", items_per_second=ips, queue_depth=queue),),
        sequence=1, timestamp=WALL, ttl=ttl, queue_depth=queue,
        price=Price(per_request_micros=price), draining=draining)


def view_of(*adverts: Advert, at: float = 0.0) -> PeerView:
    view = PeerView()
    for a in adverts:
        view, verdict = admit(view, a, now=at, wall=WALL)
        assert verdict.ok
    return view


def known(*peers: int, rtt: float = 0.01) -> Observations:
    obs = Observations()
    for i in peers:
        obs.record_rtt(PEERS[i], rtt, now=0)
    return obs


def pick(view: PeerView, request: Request, obs: Observations | None = None, *, seed: int = 0,
         now: float = 0.0, config: SchedulerConfig = NO_SPREAD) -> list[Candidate]:
    return choose(view, request, obs or Observations(), random.Random(seed), now, config)


def ids(candidates: list[Candidate]) -> list[PeerId]:
    return [c.peer for c in candidates]


# ------------------------------------------------------------------ filters


def test_only_providers_of_the_digest() -> None:
    view = view_of(advert(0), advert(1, digest=OTHER_MODEL), advert(2))
    assert set(ids(pick(view, Request(MODEL)))) == {PEERS[0], PEERS[2]}


def test_nobody_serves_the_digest() -> None:
    view = view_of(advert(0, digest=OTHER_MODEL))
    with pytest.raises(NoProviderError, match=f"no provider serves {MODEL}; the swarm serves "
                                              f"[^ ]+@{OTHER_MODEL} \\(1 provider\\)$"):
        pick(view, Request(MODEL))


def test_draining_expired_and_unreachable_providers_are_skipped() -> None:
    view = view_of(advert(0, draining=True), advert(1, ttl=5), advert(2, endpoints=()), advert(3))
    assert ids(pick(view, Request(MODEL), now=6.0)) == [PEERS[3]]


def test_price_cap_keeps_providers_at_or_below_it() -> None:
    view = view_of(advert(0, price=4), advert(1, price=5), advert(2, price=6))
    got = pick(view, Request(MODEL, max_price=5))
    assert set(ids(got)) == {PEERS[0], PEERS[1]}
    assert all(c.price <= 5 for c in got)


def test_price_cap_counts_per_item_prices() -> None:
    a = replace(advert(0), price=Price(per_request_micros=1, per_1k_items_micros=1000))
    view = view_of(a)
    assert pick(view, Request(MODEL, items=4, max_price=5))[0].price == 5
    with pytest.raises(NoProviderError, match="cheapest 6"):
        pick(view, Request(MODEL, items=5, max_price=5))


def test_impossible_price_cap_says_what_the_cheapest_asks() -> None:
    view = view_of(advert(0, price=12), advert(1, price=20), advert(2, price=15))
    with pytest.raises(NoProviderError) as err:
        pick(view, Request(MODEL, max_price=5))
    assert str(err.value) == (
        f"3 providers serve {MODEL} but all ask more than max_price 5 (cheapest 12)")


def test_mixed_reasons_are_all_reported() -> None:
    obs = Observations(ObservationConfig(failure_threshold=1))
    obs.record_failure(PEERS[1], Failure.UNAVAILABLE, now=0)
    view = view_of(advert(0, draining=True), advert(1), advert(2, price=9), advert(3, draining=True))
    with pytest.raises(NoProviderError) as err:
        pick(view, Request(MODEL, max_price=3), obs)
    assert str(err.value) == (
        f"4 providers serve {MODEL} but none can take it: 2 draining, 1 circuit open, "
        "1 above max_price 3 (cheapest 9)")


def test_stake_hook_excludes_and_defaults_to_allow_all() -> None:
    view = view_of(advert(0), advert(1))
    assert len(pick(view, Request(MODEL))) == 2
    staked = SchedulerConfig(spread_pool=1, stake_ok=lambda peer: peer == PEERS[1])
    assert ids(pick(view, Request(MODEL), config=staked)) == [PEERS[1]]
    nobody = SchedulerConfig(stake_ok=lambda peer: False)
    with pytest.raises(NoProviderError, match="2 without the required stake"):
        pick(view, Request(MODEL), config=nobody)


def test_open_breaker_excludes_half_open_admits_one_probe() -> None:
    obs = Observations(ObservationConfig(failure_threshold=2, base_ban=10))
    for _ in range(2):
        obs.record_failure(PEERS[0], Failure.TRANSPORT, now=0)
    view = view_of(advert(0, ips=1000), advert(1))
    assert ids(pick(view, Request(MODEL), obs, now=5)) == [PEERS[1]]
    assert ids(pick(view, Request(MODEL), obs, now=10))[0] == PEERS[0]  # half-open, fastest
    obs.start(PEERS[0], now=10)
    assert ids(pick(view, Request(MODEL), obs, now=10)) == [PEERS[1]]


def test_excluded_peers_are_not_returned() -> None:
    view = view_of(advert(0), advert(1))
    assert ids(pick(view, Request(MODEL, exclude=frozenset({PEERS[0]})))) == [PEERS[1]]
    with pytest.raises(NoProviderError, match="1 excluded"):
        pick(view_of(advert(0)), Request(MODEL, exclude=frozenset({PEERS[0]})))


# ------------------------------------------------------------------ scoring


def test_faster_provider_first_and_expected_latency_by_the_formula() -> None:
    view = view_of(advert(0, ips=10), advert(1, ips=100, queue=1), advert(2, ips=40))
    obs = known(0, 1, 2, rtt=0.010)
    got = pick(view, Request(MODEL, items=2), obs)
    assert ids(got) == [PEERS[1], PEERS[2], PEERS[0]]
    by_peer = {c.peer: c for c in got}
    assert by_peer[PEERS[0]].expected_latency == pytest.approx(0.010 + 2 / 10)
    assert by_peer[PEERS[1]].expected_latency == pytest.approx(0.010 + (1 + 1) * 2 / 100)
    assert by_peer[PEERS[2]].expected_latency == pytest.approx(0.010 + 2 / 40)
    assert by_peer[PEERS[1]].queue == pytest.approx(1)


def test_deep_queue_loses_to_a_slower_idle_provider() -> None:
    view = view_of(advert(0, ips=100, queue=20), advert(1, ips=50))
    assert ids(pick(view, Request(MODEL), known(0, 1)))[0] == PEERS[1]


def test_advertised_queue_is_worked_off_as_the_advert_ages() -> None:
    view = view_of(advert(0, ips=100, queue=20), advert(1, ips=40))
    obs = known(0, 1)
    assert pick(view, Request(MODEL), obs, now=0.0)[0].peer == PEERS[1]
    later = pick(view, Request(MODEL), obs, now=0.19)  # 19 of the 20 are done by now
    assert later[0].peer == PEERS[0]
    assert later[0].queue == pytest.approx(1)


def test_own_requests_in_flight_count_against_a_provider() -> None:
    view = view_of(advert(0, ips=100), advert(1, ips=80))
    obs = known(0, 1)
    assert ids(pick(view, Request(MODEL), obs))[0] == PEERS[0]
    obs.start(PEERS[0], now=0.001, items=2)
    got = pick(view, Request(MODEL), obs, now=0.001)
    assert got[0].peer == PEERS[1]
    # Own work counts in_flight_weight (2) times: 0.01 + 2 * 0.02 + 0.01.
    assert {c.peer: c for c in got}[PEERS[0]].expected_latency == pytest.approx(0.06)


def test_requests_sent_before_the_advert_are_not_counted_twice() -> None:
    obs = known(0)
    obs.start(PEERS[0], now=0.0, items=1)
    view = view_of(advert(0, ips=100, queue=1), at=0.5)  # the advert already counts it
    assert pick(view, Request(MODEL), obs, now=0.5)[0].queue == pytest.approx(1)


def test_rtt_decides_between_equal_providers() -> None:
    view = view_of(advert(0), advert(1))
    obs = Observations()
    obs.record_rtt(PEERS[0], 0.080, now=0)
    obs.record_rtt(PEERS[1], 0.005, now=0)
    assert ids(pick(view, Request(MODEL), obs))[0] == PEERS[1]


def test_service_time_observed_beats_advertised_beats_default() -> None:
    view = view_of(advert(0, ips=100), advert(1, ips=0))
    obs = known(0, 1, rtt=0.0)
    got = {c.peer: c for c in pick(view, Request(MODEL), obs)}
    assert got[PEERS[0]].expected_latency == pytest.approx(0.01)
    assert got[PEERS[1]].expected_latency == pytest.approx(NO_SPREAD.default_service)
    obs.record_success(PEERS[0], 0.05, items=1, now=0, queued=0.0, service=0.05)
    obs.record_rtt(PEERS[0], 0.0, now=0)
    got = {c.peer: c for c in pick(view, Request(MODEL), obs)}
    assert got[PEERS[0]].expected_latency == pytest.approx(0.05)


def test_unknown_peer_gets_the_default_rtt() -> None:
    view = view_of(advert(0, ips=100))
    assert pick(view, Request(MODEL))[0].expected_latency == pytest.approx(0.05 + 0.01)


def test_surprise_from_answers_steers_away_from_a_secretly_busy_provider() -> None:
    view = view_of(advert(0, ips=100), advert(1, ips=50))
    obs = known(0, 1)
    for t in range(5):  # answers take far longer than expected: others load it
        obs.record_success(PEERS[0], latency=0.3, items=1, now=t * 0.01, expected=0.02)
    assert ids(pick(view, Request(MODEL), obs, now=0.05))[0] == PEERS[1]
    assert ids(pick(view, Request(MODEL), obs, now=20.0))[0] == PEERS[0]  # faded


def test_price_preference_prefers_cheap_and_latency_breaks_ties() -> None:
    view = view_of(advert(0, ips=1000, price=9), advert(1, ips=10, price=2), advert(2, ips=100, price=2))
    obs = known(0, 1, 2)
    assert ids(pick(view, Request(MODEL, preference=Preference.PRICE), obs)) == [
        PEERS[2], PEERS[1], PEERS[0]]
    assert ids(pick(view, Request(MODEL, preference=Preference.LATENCY), obs))[0] == PEERS[0]


def test_balanced_preference_trades_relative_latency_for_relative_price() -> None:
    # 0.5: a provider 2x slower must be more than 2x cheaper to win.
    fast = advert(0, ips=100, price=19)
    view = view_of(fast, advert(1, ips=50, price=8))  # (8 + 1) / (19 + 1) < 1/2: cheap wins
    obs = known(0, 1, rtt=0.0)
    assert ids(pick(view, Request(MODEL, preference=Preference(0.5)), obs))[0] == PEERS[1]
    view = view_of(fast, advert(1, ips=50, price=11))  # (11 + 1) / 20 > 1/2: fast wins
    assert ids(pick(view, Request(MODEL, preference=Preference(0.5)), obs))[0] == PEERS[0]


def test_failover_order_is_by_score_and_limited() -> None:
    view = view_of(*(advert(i, ips=10 * (i + 1)) for i in range(8)))
    got = pick(view, Request(MODEL), known(*range(8)), config=SchedulerConfig(candidates=5, spread_pool=3))
    assert len(got) == 5
    rest = got[1:]
    assert [c.score for c in rest] == sorted(c.score for c in rest)


def test_providers_that_would_miss_the_deadline_come_last() -> None:
    view = view_of(advert(0, ips=100, queue=50), advert(1, ips=10), advert(2, ips=2))
    got = pick(view, Request(MODEL, deadline=0.2), known(0, 1, 2))
    assert [c.on_time for c in got] == [True, False, False]
    assert got[0].peer == PEERS[1]
    assert got[1].expected_latency < got[2].expected_latency


# ------------------------------------------------------------------ spreading the first pick
# (more in test_spread.py)


def test_spread_shares_load_over_the_best_without_herding_or_straying() -> None:
    # Providers 0..4 within a few percent of each other (near-equals), 5 far slower.
    view = view_of(*(advert(i, ips=100 - i) for i in range(5)), advert(5, ips=20))
    obs = known(*range(6))
    rng = random.Random(7)
    config = SchedulerConfig(spread_pool=3)
    firsts = Counter(choose(view, Request(MODEL), obs, rng, 0.0, config)[0].peer for _ in range(3000))
    share = {p: n / 3000 for p, n in firsts.items()}
    # The pool is the best three; near-equals share it evenly.
    assert set(share) == {PEERS[0], PEERS[1], PEERS[2]}
    for peer in (PEERS[0], PEERS[1], PEERS[2]):
        assert 0.28 < share[peer] < 0.39


def test_spread_pool_excludes_providers_far_worse_than_the_best() -> None:
    view = view_of(advert(0, ips=100), advert(1, ips=30), advert(2, ips=20))
    obs = known(0, 1, 2, rtt=0.0)
    firsts = {pick(view, Request(MODEL), obs, seed=s, config=SchedulerConfig())[0].peer
              for s in range(200)}
    assert firsts == {PEERS[0]}  # 3x slower is outside spread_slack 1.5


def test_same_seed_same_choices_different_seed_different_choices() -> None:
    view = view_of(*(advert(i, ips=100 - i) for i in range(6)))
    obs = known(*range(6))

    def run(seed: int) -> list[PeerId]:
        rng = random.Random(seed)
        return [choose(view, Request(MODEL), obs, rng, 0.0)[0].peer for _ in range(50)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_choose_is_pure() -> None:
    view = view_of(advert(0), advert(1))
    obs = known(0, 1)
    obs.start(PEERS[0], now=0)
    before = obs.snapshot()
    state = random.getstate()
    choose(view, Request(MODEL), obs, random.Random(1), 0.0)
    choose(view, Request(MODEL), before, random.Random(1), 0.0)
    assert obs.snapshot() == before
    assert random.getstate() == state


# ------------------------------------------------------------------ inputs


def test_public_names() -> None:
    import swarm.scheduler

    assert sorted(swarm.scheduler.__all__) == [
        "AdmissionPolicy", "BreakerState", "Candidate", "Failure", "GenerationEstimate",
        "GenerationPolicy", "ObservationConfig", "ObservationSnapshot", "Observations",
        "PeerStats", "Preference", "Request", "SchedulerConfig", "TokenCost", "admits",
        "choose", "choose_attempt", "estimate_generation", "prompt_tokens_of"]


def test_request_and_preference_validation() -> None:
    with pytest.raises(ValueError, match="items"):
        Request(MODEL, items=0)
    with pytest.raises(ValueError, match="max_price"):
        Request(MODEL, max_price=-1)
    with pytest.raises(ValueError, match="latency_weight"):
        Preference(1.5)
    with pytest.raises(ValueError, match="latency_weight"):
        Preference(float("nan"))
    assert Preference.parse("latency") is Preference.LATENCY
    assert Preference.parse("price") is Preference.PRICE
    assert Preference.parse("0.7") == Preference(0.7)
    with pytest.raises(ValueError, match="preference must be"):
        Preference.parse("fast")


@pytest.mark.parametrize("kwargs", [
    {"candidates": 0}, {"spread_pool": 0}, {"spread_slack": 0.5}, {"in_flight_weight": -1},
    {"default_rtt": -0.1}, {"default_service": 0},
])
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        SchedulerConfig(**kwargs)  # type: ignore[arg-type]


def test_an_unmeasured_provider_is_assumed_typical_so_it_gets_tried() -> None:
    # Peer 0 is measured (rtt 10 ms, service 20 ms/item); peers 1 and 2 are new and idle.
    view = view_of(advert(0, ips=0), advert(1, ips=0), advert(2, ips=0))
    obs = known(0, rtt=0.01)
    obs.record_success(PEERS[0], 0.03, items=1, now=0, queued=0.0, service=0.02)
    got = {c.peer: c.expected_latency for c in pick(view, Request(MODEL), obs)}
    assert got[PEERS[1]] == pytest.approx(got[PEERS[0]])  # the median of what we measured
    assert got[PEERS[2]] == pytest.approx(got[PEERS[0]])
    firsts = Counter(pick(view, Request(MODEL), obs, seed=s, config=SchedulerConfig())[0].peer
                     for s in range(300))
    # No herding on the one provider we happen to know: new ones win first picks too.
    assert sum(n for peer, n in firsts.items() if peer != PEERS[0]) >= 100


def test_a_stale_slow_measurement_fades_toward_the_typical_provider() -> None:
    view = view_of(*(advert(i, ips=0, ttl=600) for i in range(3)))
    obs = known(0, 1, 2, rtt=0.01)
    for peer, service in ((0, 0.02), (1, 0.02), (2, 0.5)):  # peer 2 answered slowly once
        obs.record_success(PEERS[peer], 0.01 + service, items=1, now=0, queued=0.0,
                           service=service)
    now_estimates = {c.peer: c.expected_latency for c in pick(view, Request(MODEL), obs, now=0)}
    later = {c.peer: c.expected_latency for c in pick(view, Request(MODEL), obs, now=60)}
    # One sample counts a quarter against the typical provider (SchedulerConfig.service_prior).
    assert now_estimates[PEERS[2]] > 4 * now_estimates[PEERS[0]]
    # Six half-lives later the old sample barely counts: peer 2 is back within the slack.
    assert later[PEERS[2]] < 1.3 * later[PEERS[0]]
