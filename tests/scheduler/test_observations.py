"""Observations: EWMA math, p95, in-flight accounting, the circuit breaker and its growing bans."""

from __future__ import annotations

import math

import pytest

from swarm.protocol import Identity
from swarm.scheduler import BreakerState, Failure, ObservationConfig, Observations

PEER = Identity.from_seed(b"\x01" * 32).peer_id
OTHER = Identity.from_seed(b"\x02" * 32).peer_id


def test_rtt_ewma_starts_at_first_sample_then_moves_by_alpha() -> None:
    obs = Observations(ObservationConfig(rtt_alpha=0.25))
    assert obs.get(PEER).rtt is None
    obs.record_rtt(PEER, 0.100, now=0)
    assert obs.get(PEER).rtt == pytest.approx(0.100)
    obs.record_rtt(PEER, 0.020, now=1)
    assert obs.get(PEER).rtt == pytest.approx(0.100 + 0.25 * (0.020 - 0.100))
    assert obs.get(OTHER).rtt is None


def test_success_with_server_timing_learns_per_item_service_and_rtt() -> None:
    obs = Observations(ObservationConfig(service_alpha=0.5, rtt_alpha=0.5))
    obs.record_success(PEER, latency=0.100, items=4, now=0, queued=0.030, service=0.040)
    s = obs.get(PEER)
    assert s.service == pytest.approx(0.010)  # 40 ms for 4 items
    assert s.rtt == pytest.approx(0.030)  # 100 - 30 queued - 40 executing
    obs.record_success(PEER, latency=0.050, items=1, now=1, queued=0.0, service=0.020)
    s = obs.get(PEER)
    assert s.service == pytest.approx(0.010 + 0.5 * (0.020 - 0.010))
    assert s.rtt == pytest.approx(0.030 + 0.5 * (0.030 - 0.030))
    assert s.latency == pytest.approx(0.100 + 0.2 * (0.050 - 0.100))
    assert s.successes == 2


def test_success_without_server_timing_leaves_service_and_rtt_unknown() -> None:
    obs = Observations()
    obs.record_success(PEER, latency=0.1, items=2, now=0)
    assert obs.get(PEER).service is None
    assert obs.get(PEER).rtt is None
    assert obs.get(PEER).latency == pytest.approx(0.1)


def test_surprise_is_an_ewma_of_observed_minus_expected_that_halves_when_idle() -> None:
    obs = Observations(ObservationConfig(surprise_alpha=0.5, surprise_half_life=2.0))
    assert obs.get(PEER).surprise_now(0, 2.0) == 0.0
    obs.record_success(PEER, latency=0.30, items=1, now=10, expected=0.10)
    assert obs.get(PEER).surprise_now(10, 2.0) == pytest.approx(0.20)
    assert obs.get(PEER).surprise_now(12, 2.0) == pytest.approx(0.10)
    assert obs.get(PEER).surprise_now(14, 2.0) == pytest.approx(0.05)
    # The next sample blends with the decayed value, not the stale one.
    obs.record_success(PEER, latency=0.10, items=1, now=12, expected=0.10)
    assert obs.get(PEER).surprise_now(12, 2.0) == pytest.approx(0.05)


def test_p95_needs_enough_samples_and_keeps_only_the_window() -> None:
    obs = Observations(ObservationConfig(latency_window=20, p95_min_samples=8))
    for i in range(7):
        obs.record_success(PEER, latency=float(i), items=1, now=i)
    assert obs.get(PEER).p95(8) is None
    assert obs.p95(PEER) is None
    for i in range(7, 100):
        obs.record_success(PEER, latency=float(i), items=1, now=i)
    s = obs.get(PEER)
    assert s.latencies == tuple(float(i) for i in range(80, 100))
    assert s.p95(8) == 98.0  # nearest rank: ceil(0.95 * 20) = 19th of 80..99
    assert obs.p95(PEER) == 98.0


def test_in_flight_counts_requests_and_items_and_finish_drops_the_oldest() -> None:
    obs = Observations()
    obs.start(PEER, now=1.0, items=2)
    obs.start(PEER, now=2.0, items=3)
    obs.start(PEER, now=3.0)
    s = obs.get(PEER)
    assert s.outstanding == 3
    assert s.items_in_flight() == 6
    assert s.outstanding_since(1.5) == 2
    assert s.items_in_flight(since=1.5) == 4
    obs.finish(PEER, now=4.0)
    assert obs.get(PEER).in_flight == ((2.0, 3), (3.0, 1))
    obs.finish(PEER, now=5.0)
    obs.finish(PEER, now=5.0)
    obs.finish(PEER, now=5.0)  # one finish too many is harmless
    assert obs.get(PEER).outstanding == 0


def test_snapshot_is_frozen() -> None:
    obs = Observations()
    obs.start(PEER, now=0)
    snap = obs.snapshot()
    obs.start(PEER, now=1)
    obs.record_failure(OTHER, Failure.TRANSPORT, now=1)
    assert snap.get(PEER).outstanding == 1
    assert OTHER not in set(snap)
    assert obs.snapshot().get(PEER).outstanding == 2
    assert len(obs.snapshot()) == 2


def test_failure_kinds_from_grpc_codes() -> None:
    assert Failure.from_code("UNAVAILABLE") is Failure.UNAVAILABLE
    assert Failure.from_code("RESOURCE_EXHAUSTED") is Failure.OVERLOADED
    assert Failure.from_code("DEADLINE_EXCEEDED") is Failure.DEADLINE
    assert Failure.from_code("NOT_FOUND") is Failure.NOT_FOUND
    assert Failure.from_code("INTERNAL") is Failure.ERROR
    assert Failure.from_code("INVALID_ARGUMENT") is None  # the client's fault, never the peer's
    assert Failure.from_code("CANCELLED") is None


def test_recent_failures_count_within_the_window() -> None:
    obs = Observations(ObservationConfig(failure_window=10, failure_threshold=100))
    for t in (0, 5, 9):
        obs.record_failure(PEER, Failure.ERROR, now=t)
    s = obs.get(PEER)
    assert s.recent_failures(now=9, window=10) == 3
    assert s.recent_failures(now=12, window=10) == 2
    assert s.failures == 3
    assert s.last_failure is Failure.ERROR


CFG = ObservationConfig(failure_threshold=3, base_ban=1.0, max_ban=8.0, ban_reset_after=100.0)


def _fail(obs: Observations, now: float, times: int = 1) -> None:
    for _ in range(times):
        obs.record_failure(PEER, Failure.TRANSPORT, now)


def test_breaker_opens_after_threshold_consecutive_failures_only() -> None:
    obs = Observations(CFG)
    _fail(obs, 0, times=2)
    obs.record_success(PEER, 0.01, 1, now=0)  # resets the streak
    _fail(obs, 0, times=2)
    assert obs.get(PEER).breaker(0) is BreakerState.CLOSED
    assert obs.get(PEER).available(0)
    _fail(obs, 0)
    s = obs.get(PEER)
    assert s.breaker(0) is BreakerState.OPEN
    assert not s.available(0.999)
    assert s.open_until == pytest.approx(1.0)


def test_half_open_admits_one_probe_and_success_closes() -> None:
    obs = Observations(CFG)
    _fail(obs, 0, times=3)
    assert obs.get(PEER).breaker(1.0) is BreakerState.HALF_OPEN
    assert obs.get(PEER).available(1.0)
    obs.start(PEER, now=1.0)  # the probe
    assert not obs.get(PEER).available(1.0)
    obs.record_success(PEER, 0.01, 1, now=1.1)
    obs.finish(PEER, now=1.1)
    s = obs.get(PEER)
    assert s.breaker(1.1) is BreakerState.CLOSED
    assert s.available(1.1)


def test_bans_double_on_each_reopen_up_to_the_cap() -> None:
    obs = Observations(CFG)
    _fail(obs, 0, times=3)
    now, bans = 0.0, []
    for _ in range(6):
        s = obs.get(PEER)
        bans.append(s.open_until - now)
        now = s.open_until  # half-open: the probe fails
        assert s.breaker(now) is BreakerState.HALF_OPEN
        _fail(obs, now)
    assert bans == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_flapping_peer_keeps_its_ban_level_and_a_recovered_one_is_forgiven() -> None:
    obs = Observations(CFG)
    _fail(obs, 0, times=3)  # ban 1
    _fail(obs, 1.0)  # probe fails: ban 2, until 3
    obs.record_success(PEER, 0.01, 1, now=3.0)  # probe succeeds: closed
    _fail(obs, 4.0, times=3)  # soon after: next ban doubles
    assert obs.get(PEER).open_until == pytest.approx(4.0 + 4.0)
    obs.record_success(PEER, 0.01, 1, now=8.0)
    _fail(obs, 8.0 + 100.0, times=3)  # closed for ban_reset_after: back to base_ban
    assert obs.get(PEER).open_until == pytest.approx(108.0 + 1.0)


def test_late_answers_while_open_change_nothing_about_the_ban() -> None:
    obs = Observations(CFG)
    _fail(obs, 0, times=3)
    _fail(obs, 0.5)  # a request sent before the breaker opened fails late
    obs.record_success(PEER, 0.01, 1, now=0.6)  # or succeeds late
    s = obs.get(PEER)
    assert s.breaker(0.7) is BreakerState.OPEN
    assert s.open_until == pytest.approx(1.0)


def test_forget_drops_a_peer() -> None:
    obs = Observations()
    obs.start(PEER, now=0)
    obs.forget(PEER)
    obs.forget(PEER)
    assert obs.get(PEER).outstanding == 0
    assert len(obs.snapshot()) == 0


@pytest.mark.parametrize("kwargs", [
    {"rtt_alpha": 0}, {"service_alpha": 1.5}, {"surprise_alpha": -0.1},
    {"latency_window": 0}, {"failure_threshold": 0}, {"base_ban": 0},
    {"base_ban": 10, "max_ban": 5}, {"surprise_half_life": 0}, {"failure_window": -1},
])
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        ObservationConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_samples_are_refused() -> None:
    obs = Observations()
    with pytest.raises(ValueError, match="rtt"):
        obs.record_rtt(PEER, -1.0, now=0)
    with pytest.raises(ValueError, match="items"):
        obs.record_success(PEER, 0.1, 0, now=0)
    assert math.isinf(obs.get(PEER).closed_since)


def test_overall_p95_covers_every_peer() -> None:
    obs = Observations()
    assert obs.overall_p95() is None
    peers = [Identity.from_seed(bytes([40 + i]) * 32).peer_id for i in range(20)]
    for i, peer in enumerate(peers):  # one sample per peer: no peer has a p95 of its own
        obs.record_success(peer, latency=0.01 * (i + 1), items=1, now=float(i))
    assert all(obs.p95(p) is None for p in peers)
    assert obs.overall_p95() == pytest.approx(0.19)
