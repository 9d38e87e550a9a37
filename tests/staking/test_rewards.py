"""rewards(): the per-epoch inflation rule, split by served work weighted by reliability."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.staking import PPM, Params, WorkReport, rewards
from tests.staking import TIMEKEEPER, USERS

A, B, C = (USERS[i].peer_id for i in range(3))
PEERS = [u.peer_id for u in USERS]


def params(inflation_ppm: int = 10_000, alpha: int = 200_000, initial: int = 500_000) -> Params:
    return Params(name="t", timekeeper=TIMEKEEPER.peer_id, inflation_ppm=inflation_ppm,
                  reputation_alpha_ppm=alpha, initial_reputation_ppm=initial)


def test_zero_inflation_mints_nothing_but_still_scores_reliability() -> None:
    out = rewards(params(inflation_ppm=0), 10**9, [WorkReport(A, 10, 10)], {})
    assert out.mints == ()
    assert out.total == 0
    # 0.8 * 0.5 + 0.2 * 0.5 (half failed)
    assert dict(out.reputation) == {A: 500_000}


def test_equal_reliability_splits_by_served_work() -> None:
    out = rewards(params(), 1_000_000, [WorkReport(A, 300), WorkReport(B, 100)], {})
    assert dict(out.mints) == {A: 7500, B: 2500}  # pool = 1% of 1e6
    assert out.total == 10_000


def test_unreliable_work_earns_less_per_request() -> None:
    out = rewards(params(alpha=PPM), 1_000_000,
                  [WorkReport(A, 100, 0), WorkReport(B, 100, 100)], {})
    # alpha = 1: reputation is this epoch's reliability, 1.0 vs 0.5 -> weights 2:1
    assert dict(out.reputation) == {A: PPM, B: PPM // 2}
    assert dict(out.mints) == {A: 6666, B: 3333}  # the pool of 10000, rounded down


def test_reputation_is_an_ewma_over_epochs() -> None:
    rep = {A: 900_000}
    out = rewards(params(alpha=250_000), 0, [WorkReport(A, 0, 10)], rep)
    assert dict(out.reputation) == {A: 675_000}  # 0.75 * 0.9 + 0.25 * 0
    quiet = rewards(params(alpha=250_000), 0, [WorkReport(A, 0, 0)], rep)
    assert dict(quiet.reputation) == {A: 900_000}  # no requests, no evidence


def test_nothing_served_mints_nothing() -> None:
    assert rewards(params(), 10**6, [WorkReport(A, 0, 5)], {}).mints == ()
    assert rewards(params(), 10**6, [], {}).mints == ()


def test_the_mint_stops_short_of_the_wire_limit() -> None:
    out = rewards(params(inflation_ppm=PPM), 2**63 - 10, [WorkReport(A, 1)], {})
    assert 2**63 - 10 + out.total <= 2**63 - 1


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(base=st.integers(0, 10**15), inflation=st.integers(0, PPM),
       work=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
                     min_size=0, max_size=len(PEERS)),
       reps=st.lists(st.integers(0, PPM), min_size=len(PEERS), max_size=len(PEERS)))
def test_mints_never_exceed_the_pool_and_follow_the_weights(
        base: int, inflation: int, work: list[tuple[int, int]], reps: list[int]) -> None:
    reports = [WorkReport(PEERS[i], s, f) for i, (s, f) in enumerate(work)]
    reputation = dict(zip(PEERS, reps, strict=True))
    out = rewards(params(inflation_ppm=inflation), base, reports, reputation)
    pool = base * inflation // PPM
    assert 0 <= out.total <= pool
    # Rounding down loses less than one unit per worker.
    new_reputation = dict(out.reputation)
    weights = {r.worker: r.served * new_reputation[r.worker] for r in reports}
    if pool and sum(weights.values()):
        assert pool - out.total < len(reports)
    for worker, amount in out.mints:
        assert amount > 0
        assert weights[worker] > 0
    for (_, rep) in out.reputation:
        assert 0 <= rep <= PPM
    # Deterministic and order-free.
    assert rewards(params(inflation_ppm=inflation), base, list(reversed(reports)),
                   reputation) == out
