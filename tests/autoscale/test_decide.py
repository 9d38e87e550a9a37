"""decide() tested directly: tables of situations, and properties over random swarms."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm._errors import ConfigError
from swarm._types import Digest
from swarm.autoscale import (
    ActionKind,
    AutoscaleConfig,
    Decision,
    SelfState,
    allowed,
    decide,
    supply_and_demand,
)
from swarm.protocol import Advert, Identity, ModelOffer, PeerView, Price, admit

HOT = Digest.of(b"hot")
COLD = Digest.of(b"cold")
MB = 1 << 20
CONFIG = AutoscaleConfig(enabled=True, up_delay=30, panic_delay=6, down_delay=120,
                         target_load=0.7, min_replicas=1)
UNCAPPED = dataclasses.replace(CONFIG, max_scale_up_rate=100)


def peer(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(2, "big") * 16)


def offer(digest: Digest = HOT, name: str = "acme/chat", *, load: float = 0.0,
          ips: float = 10.0, memory: int = 100 * MB, autoscaled: bool = True) -> ModelOffer:
    """An offer whose replica load is `load` (its utilization; beyond 1, arrivals over
    throughput)."""
    return ModelOffer(digest, name, items_per_second=ips, arrival_rate=load * ips,
                      utilization=min(1.0, load), memory_bytes=memory, autoscaled=autoscaled)


def advert(i: int, models: tuple[ModelOffer, ...] = (), *, price: int = 10,
           stored: tuple[Digest, ...] = (), draining: bool = False) -> Advert:
    return Advert(peer(i).peer_id, (f"10.0.0.{i}:1",), models, 1, 1000.0, 60.0,
                  price=Price(price), stored=stored, draining=draining)


def view_of(*adverts: Advert) -> PeerView:
    view = PeerView()
    for a in adverts:
        view, verdict = admit(view, a, now=0.0, wall=1000.0)
        assert verdict.ok
    return view


def swarm(loads: list[float], idle: int, *, price: int = 10) -> PeerView:
    """Providers of HOT with these loads (the first one stores it), and `idle` empty peers."""
    ads = [advert(i + 1, (offer(load=x),), price=price, stored=(HOT,) if i == 0 else ())
           for i, x in enumerate(loads)]
    ads += [advert(100 + j) for j in range(idle)]
    return view_of(*ads)


def me(i: int = 200, models: tuple[ModelOffer, ...] = (), **kw: object) -> SelfState:
    fields: dict[str, object] = {"now": 0.0, "advert": advert(i, models)}
    fields.update(kw)
    return SelfState(**fields)  # type: ignore[arg-type]


def run(view: PeerView, state: SelfState, config: AutoscaleConfig = CONFIG, *,
        seed: int = 0, steps: tuple[float, ...] = (0.0,)) -> Decision:
    """decide() at each time in `steps`, carrying the trends, as the driver does."""
    decision = Decision((), {})
    rng = random.Random(seed)
    for t in steps:
        state = dataclasses.replace(state, now=t, trends=decision.trends)
        decision = decide(view, state, config, rng)
    return decision


# ------------------------------------------------------------------ demand


def test_demand_counts_replicas_load_and_candidates() -> None:
    view = swarm([3.0], idle=7)
    d = supply_and_demand(view, me().advert)[HOT]
    assert (d.replicas, d.candidates, d.holders) == (1, 8, 1)
    assert d.load == pytest.approx(3.0)
    assert d.desired(0.7, 1) == 5


def test_one_hostile_advert_moves_demand_by_at_most_the_cap() -> None:
    liar = advert(9, (offer(load=1e6),))
    d = supply_and_demand(view_of(liar), None, max_replica_load=4.0)[HOT]
    assert d.load == 4.0


def test_draining_providers_are_neither_supply_nor_candidates() -> None:
    view = view_of(advert(1, (offer(load=1.0),)), advert(2, (offer(load=1.0),), draining=True),
                   advert(3, draining=True))
    d = supply_and_demand(view, None)[HOT]
    assert (d.replicas, d.candidates) == (1, 0)


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize(("case", "loads", "steps", "config", "expect"), [
    # 300% on one node, one idle candidate (p = 1): loads after the up-delay, not before.
    ("hot, before the delay", [0.9], (0, 10, 20), CONFIG, None),
    ("hot, after the delay", [0.9], (0, 10, 20, 30), CONFIG, ActionKind.LOAD),
    # Load 3.0 per replica is panic (>= 2 x 0.7): the short delay applies.
    ("panic", [3.0], (0, 6), CONFIG, ActionKind.LOAD),
    ("at target: nothing", [0.6], (0, 100, 200), CONFIG, None),
    ("not allowed", [3.0], (0, 6), dataclasses.replace(CONFIG, allowed=("other/",)), None),
    ("allowed by namespace", [3.0], (0, 6), dataclasses.replace(CONFIG, allowed=("acme/",)),
     ActionKind.LOAD),
    ("price too low", [3.0], (0, 6), dataclasses.replace(CONFIG, min_price=11), None),
    ("over the memory budget", [3.0], (0, 6),
     dataclasses.replace(CONFIG, memory_budget=50 * MB), None),
    ("within the memory budget", [3.0], (0, 6),
     dataclasses.replace(CONFIG, memory_budget=100 * MB), ActionKind.LOAD),
    ("max_models reached", [3.0], (0, 6), dataclasses.replace(CONFIG, max_models=0), None),
])
def test_load_table(case: str, loads: list[float], steps: tuple[float, ...],
                    config: AutoscaleConfig, expect: ActionKind | None) -> None:
    decision = run(swarm(loads, idle=0), me(), config, steps=steps)
    kinds = [a.kind for a in decision.actions]
    assert kinds == ([expect] if expect else []), case


def test_no_load_without_a_registry_holder() -> None:
    view = view_of(advert(1, (offer(load=3.0),)))  # nobody stores it: nothing to pull
    assert run(view, me(), steps=(0, 6)).actions == ()


def test_no_action_while_busy_or_in_backoff() -> None:
    view = swarm([3.0], idle=0)
    assert run(view, me(busy=True), steps=(0, 6)).actions == ()
    assert run(view, me(backoff_until={HOT: 100.0}), steps=(0, 6)).actions == ()
    assert run(view, me(backoff_until={HOT: 5.0}), steps=(0, 6)).actions != ()


def test_no_second_version_of_a_name_served_here() -> None:
    other = offer(Digest.of(b"v0"), load=0.1)
    assert run(swarm([3.0], idle=0), me(models=(other,)), steps=(0, 6)).actions == ()


def test_the_better_paying_model_is_loaded_first() -> None:
    cheap, dear = Digest.of(b"cheap"), Digest.of(b"dear")
    view = view_of(advert(1, (offer(cheap, "acme/cheap", load=3.0),), price=5, stored=(cheap,)),
                   advert(2, (offer(dear, "acme/dear", load=3.0),), price=50, stored=(dear,)))
    (action,) = run(view, me(), UNCAPPED, steps=(0, 6)).actions
    assert action.digest == dear


def test_a_replica_count_change_restarts_the_delay() -> None:
    config = CONFIG
    state = me()
    d1 = run(swarm([0.9], idle=0), state, steps=(0, 20))
    # A second replica appears at 20 s: still hot (0.9 + 0.9 > 2 x 0.7), but the delay restarts.
    state = dataclasses.replace(state, now=40.0, trends=d1.trends)
    d2 = decide(swarm([0.9, 0.9], idle=0), state, config, random.Random(0))
    assert d2.actions == ()
    assert d2.trends[HOT].since == 40.0


def test_after_a_lottery_the_next_waits_settle() -> None:
    config = dataclasses.replace(CONFIG, max_scale_up_rate=100, settle=60)
    view = swarm([3.0], idle=30)  # p = 4 / 31 per lottery
    state = me()
    rolls = 0
    decision = Decision((), {})
    rng = random.Random(3)
    for t in range(0, 120, 2):
        state = dataclasses.replace(state, now=float(t), trends=decision.trends)
        before = decision.trends.get(HOT)
        decision = decide(view, state, config, rng)
        after = decision.trends.get(HOT)
        rolls += after is not before and after is not None and after.since > t  # a lottery
        assert before is None or after is not None
    assert rolls == 2  # at 6 s (the panic delay), then 60 + 6 s later


def test_a_provider_missing_for_a_moment_does_not_restart_the_delay() -> None:
    state = me()
    d1 = run(swarm([0.9, 0.9, 0.9], idle=0), state, steps=(0, 20))
    since = d1.trends[HOT].since
    # One provider's advert is late: two replicas in the view, then none at all.
    state = dataclasses.replace(state, now=25.0, trends=d1.trends)
    d2 = decide(swarm([0.9, 0.9], idle=0), state, CONFIG, random.Random(0))
    assert d2.trends[HOT].since == since
    state = dataclasses.replace(state, now=28.0, trends=d2.trends)
    d3 = decide(view_of(advert(9)), state, CONFIG, random.Random(0))
    assert d3.trends[HOT].since == since
    # Back, and hot past the delay: this node's lottery (p = 1: it is the only candidate).
    state = dataclasses.replace(state, now=31.0, trends=d3.trends)
    (action,) = decide(swarm([0.9, 0.9, 0.9], idle=0), state, CONFIG, random.Random(0)).actions
    assert action.kind is ActionKind.LOAD


def test_unload_after_the_down_delay_only_what_it_loaded() -> None:
    quiet = offer(load=0.0)
    view = view_of(advert(1, (quiet,), stored=(HOT,)), advert(2, (quiet,)))
    own = (quiet,)
    # Four providers (me + 3) of a quiet model: it wants min_replicas = 1, so 3 are excess;
    # find which of the peers rank among them, and check this node acts only if it does.
    managed = me(models=own, managed=frozenset({HOT}))
    early = run(view, managed, steps=(0, 60))
    assert early.actions == ()
    late = run(view, managed, steps=(0, 60, 120))
    d = supply_and_demand(view, managed.advert)[HOT]
    assert d.replicas == 3
    import hashlib
    ranked = sorted(d.releasable,
                    key=lambda p: hashlib.sha256(f"{p.value}\0{HOT}".encode()).digest())
    should = managed.advert is not None and managed.advert.peer_id in ranked[:2]
    assert [a.kind for a in late.actions] == ([ActionKind.UNLOAD] if should else [])
    # A model the operator serves (not managed) is never released.
    pinned = me(models=own)
    assert run(view, pinned, steps=(0, 60, 120)).actions == ()


def test_a_pinned_replica_does_not_hold_back_the_release() -> None:
    """The operator's replica ranks nowhere: the autoscaled one releases down to the minimum."""
    view = view_of(advert(1, (offer(load=0.0, autoscaled=False),), stored=(HOT,)))
    managed = me(models=(offer(load=0.0),), managed=frozenset({HOT}))
    (action,) = run(view, managed, steps=(0, 60, 120)).actions
    assert action.kind is ActionKind.UNLOAD
    assert "1 of 1 autoscaled" in action.reason


def test_allowed_patterns() -> None:
    assert allowed("acme/chat", ())
    assert allowed("acme/chat", ("acme/",))
    assert allowed("acme/chat", ("acme/chat",))
    assert not allowed("acme/chatter", ("acme/chat",))
    assert not allowed("evil/acme/chat", ("acme/",))


@pytest.mark.parametrize("bad", [
    {"interval": 0}, {"target_load": -1}, {"panic_factor": 1.0}, {"up_delay": float("nan")},
    {"up_delay": 60, "down_delay": 30}, {"min_replicas": -1}, {"backoff_initial": 0},
])
def test_config_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AutoscaleConfig(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ properties

loads = st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(loads=loads, idle=st.integers(0, 6), seed=st.integers(0, 2**32 - 1),
       min_replicas=st.integers(0, 4))
def test_never_below_min_replicas(loads: list[float], idle: int, seed: int,
                                  min_replicas: int) -> None:
    """Every provider deciding on the same view: the unloads leave at least min_replicas."""
    config = dataclasses.replace(CONFIG, min_replicas=min_replicas)
    view = swarm(loads, idle)
    unloads = 0
    for i in range(len(loads)):
        own = view.get(peer(i + 1).peer_id)
        assert own is not None
        state = SelfState(now=0.0, advert=own.advert, managed=frozenset({HOT}))
        decision = run(view, state, config, seed=seed + i, steps=(0, 30, 60, 120, 180))
        unloads += sum(a.kind is ActionKind.UNLOAD for a in decision.actions)
    assert len(loads) - unloads >= min(len(loads), min_replicas)


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(0, 1000), used=st.integers(0, 1000), size=st.integers(0, 500),
       seed=st.integers(0, 1000))
def test_never_above_the_memory_budget(budget: int, used: int, size: int, seed: int) -> None:
    config = dataclasses.replace(CONFIG, memory_budget=budget * MB)
    view = view_of(advert(1, (offer(load=4.0, memory=size * MB),), stored=(HOT,)))
    decision = run(view, me(memory_used=used * MB), config, seed=seed, steps=(0, 6))
    for action in decision.actions:
        assert budget == 0 or used * MB + action.memory_bytes <= budget * MB
        assert budget == 0 or action.memory_bytes > 0


def test_expected_loads_match_the_deficit() -> None:
    """Over many seeds, the idle candidates' loads in one round average the deficit."""
    view = swarm([3.0], idle=20)  # desired ceil(3 / 0.7) = 5: deficit 4 among 20 candidates
    rounds, total = 400, 0
    for seed in range(rounds):
        rng = random.Random(seed)
        for j in range(20):
            own = advert(100 + j)
            state = SelfState(now=6.0, advert=own, trends=run(view, me(), steps=(0,)).trends)
            total += len(decide(view, state, UNCAPPED, rng).actions)
    mean = total / rounds
    assert mean == pytest.approx(4.0, abs=0.3)


def test_scale_up_rate_caps_the_deficit() -> None:
    """3 replicas' worth on one replica wants 5, but at most 2 x 1 at once: a deficit of 1."""
    d = supply_and_demand(swarm([3.0], idle=3), None)[HOT]
    assert d.desired(0.7, 1) == 5
    assert d.desired(0.7, 1, max_rate=2.0) == 2


def test_below_saturation_only_utilization_counts() -> None:
    """Small batches run slower per item: arrivals over that throughput would overstate."""
    half = ModelOffer(HOT, "acme/chat", items_per_second=1, arrival_rate=3, utilization=0.5,
                      queue_wait=0.1)
    assert supply_and_demand(view_of(advert(1, (half,))), None)[HOT].load == 0.5


def test_a_backlog_is_load_even_when_the_model_looks_idle() -> None:
    """A CPU node whose time goes to gRPC, not to its model: utilization 0.3, but requests
    wait 3 s. It counts as BACKLOG (1.5) replicas' worth at least."""
    busy = ModelOffer(HOT, "acme/chat", items_per_second=100, arrival_rate=20,
                      utilization=0.3, queue_wait=3.0)
    assert supply_and_demand(view_of(advert(1, (busy,))), None)[HOT].load == 1.5


def test_a_backlog_counts_as_load() -> None:
    """A saturated provider whose arrivals match its throughput (clients bound what they
    have in flight) but whose queue waits 2 s: the backlog makes it hot."""
    offer_ = ModelOffer(HOT, "acme/chat", items_per_second=10, arrival_rate=10,
                        utilization=1.0, queue_wait=2.0)
    d = supply_and_demand(view_of(advert(1, (offer_,), stored=(HOT,))), None)[HOT]
    assert d.load == pytest.approx(1.5)  # "more" (x1.5), then measure again
    assert supply_and_demand(view_of(advert(1, (offer_,))), None,
                             target_queue_wait=0)[HOT].load == pytest.approx(1.0)


def test_swarm_peers_rows_show_replicas_per_model() -> None:
    from swarm.cli._client_commands import _replica_rows

    rows = _replica_rows(swarm([1.0, 0.5], idle=2))
    assert [(r["name"], r["replicas"], r["load"], r["holders"]) for r in rows] == [
        ("acme/chat", 2, 1.5, 1)]
