"""The cheater scenario at a small size (virtual time): every cheater is slashed and then
gets no traffic, no honest provider is ever slashed, and a seed gives one run."""

from __future__ import annotations

from swarm.simnet import CheaterSettings, cheater_table, run_cheater

SMALL = CheaterSettings(providers=6, cheaters=2, cheat_rate=0.5, verify_fraction=0.3, rate=5.0,
                        duration=300.0, after=20.0, clients=2, seed=1)


def test_cheaters_are_slashed_and_excluded_and_honest_providers_never() -> None:
    result = run_cheater(SMALL)
    assert result.honest_slashed == []
    assert all(t is not None for t in result.excluded_at.values())
    assert len(result.excluded_at) == 2
    assert result.failed == 0
    # Verification costs about its fraction in extra requests (copies, plus referees).
    assert 0.2 < result.extra_requests / result.requests < 0.45
    # Nothing reaches a cheater once excluded: its calls stop growing (run it longer).
    longer = run_cheater(CheaterSettings(**{**_fields(SMALL), "after": 120.0}))
    assert longer.cheater_calls == result.cheater_calls
    assert longer.wrong_delivered == result.wrong_delivered
    table = cheater_table([result])
    assert "| 30% | 1 | 2/2 |" in table


def test_a_seed_gives_one_run() -> None:
    a, b = run_cheater(SMALL), run_cheater(SMALL)
    assert a.row() | {"wall_s": 0} == b.row() | {"wall_s": 0}


def _fields(s: CheaterSettings) -> dict[str, object]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}
