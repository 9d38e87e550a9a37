"""Scenario files: parsing, validation errors, overrides, and the request plan per shape."""

from __future__ import annotations

import itertools
import random
import re
import textwrap
from pathlib import Path

import pytest

from swarm._errors import ConfigError
from swarm.simnet._scenario import (
    Burst,
    ChatMix,
    FaultKind,
    Shape,
    VirtualSettings,
    Workload,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
    plan_chats,
    plan_requests,
    rate_at,
    send_times,
)

MINIMAL = """
name = "t"
duration = 10
[[nodes.group]]
count = 2
models = ["builtin/mlp"]
[[workload.model]]
name = "builtin/mlp"
"""


def scenario(extra: str = "", base: str = MINIMAL):
    return parse_scenario(textwrap.dedent(base) + textwrap.dedent(extra), source="t.toml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_scenario(textwrap.dedent(text), source="bad.toml")
    return str(info.value)


# --------------------------------------------------------------------------- shipped files


def test_builtin_scenarios_all_parse() -> None:
    names = builtin_scenarios()
    assert {"default", "failover", "heterogeneous", "churn", "rollout"} <= set(names)
    for name in names:
        s = load_scenario(name)
        assert s.name == name
        assert s.source == f"builtin:{name}"
        assert s.description


def test_default_matches_the_readme_promise() -> None:
    s = load_scenario("default")
    assert s.node_count == 4
    assert s.duration == 30
    assert not s.faults
    assert s.workload.shape is Shape.POISSON
    assert s.workload.rate == 20
    assert {m.name for m in s.workload.models} == {"builtin/minilm", "builtin/mlp"}
    # Chat with SmolLM2 on two of the four nodes, at a low rate, with its own promises.
    assert [spec.models for spec in s.node_specs()] == [
        ("builtin/minilm", "builtin/mlp"), ("builtin/smollm2",), ("builtin/smollm2",),
        ("builtin/minilm", "builtin/mlp")]
    (chat,) = s.workload.chats
    assert (chat.model, chat.rate, chat.max_tokens, chat.temperature) == (
        "builtin/smollm2", 0.5, 32, 0.0)
    assert s.promises.max_lost_chats == 0
    assert s.promises.ttft_p99_ms is not None


def test_shipped_fault_timelines() -> None:
    assert [f.kind for f in load_scenario("failover").faults] == [FaultKind.KILL]
    assert load_scenario("failover").promises.max_lost_requests == 0
    assert [f.kind for f in load_scenario("churn").faults] == [FaultKind.LEAVE, FaultKind.REJOIN]
    assert [f.kind for f in load_scenario("rollout").faults] == [FaultKind.ROLLOUT,
                                                                 FaultKind.ROLLBACK]
    speeds = [n.slowdown for n in load_scenario("heterogeneous").node_specs()]
    assert speeds == [1.0, 2.0, 3.0, 4.0]
    prices = [n.price_per_request for n in load_scenario("heterogeneous").node_specs()]
    assert len(set(prices)) == 4


def test_load_by_path_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert load_scenario(path).name == "t"
    assert load_scenario(str(path)).source == str(path)
    with pytest.raises(ConfigError, match=r"no scenario file or built-in scenario named 'nope'"
                                          r".*default"):
        load_scenario("nope")
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")


# --------------------------------------------------------------------------- parsing


def test_minimal_scenario_defaults() -> None:
    s = scenario()
    assert s.node_count == 2
    assert s.seed == 0
    assert s.promises.max_lost_requests == 0
    assert s.promises.p99_ms is None
    (mix,) = s.workload.models
    assert mix.inputs == "vector"
    assert mix.dim == 512
    assert mix.weight == 1


def test_node_count_without_groups_uses_default_group() -> None:
    s = parse_scenario("duration = 5\n[nodes]\ncount = 3\n", source="x")
    assert s.node_count == 3
    assert [n.models for n in s.node_specs()] == [("builtin/minilm", "builtin/mlp")] * 3


def test_groups_expand_in_order_and_cycle_with_override() -> None:
    s = scenario("""
        [[nodes.group]]
        count = 1
        models = ["builtin/mlp"]
        slowdown = 3
        price_per_request = 7
    """, base=MINIMAL)
    assert [n.slowdown for n in s.node_specs()] == [1, 1, 3]
    bigger = s.with_overrides(nodes=5)
    assert [n.slowdown for n in bigger.node_specs()] == [1, 1, 3, 1, 1]
    assert [n.index for n in bigger.node_specs()] == [0, 1, 2, 3, 4]
    assert [n.slowdown for n in s.with_overrides(nodes=1).node_specs()] == [1]


def test_overrides_validate_again() -> None:
    s = scenario("""
        [[fault]]
        at = 8
        kind = "kill"
        node = 1
    """)
    assert s.with_overrides(duration=9, rate=3, seed=4).workload.rate == 3
    with pytest.raises(ConfigError, match=r"command-line overrides.*must happen during the run"):
        s.with_overrides(duration=5)
    with pytest.raises(ConfigError, match=r"node 1 is out of range \(the swarm has 1 nodes"):
        s.with_overrides(nodes=1)


def test_rate_override_scales_every_rate() -> None:
    w = Workload(shape=Shape.BURST, rate=10, burst_rate=40, bursts=(Burst(1, 1),))
    scaled = w.scaled_to(5)
    assert (scaled.rate, scaled.burst_rate) == (5, 20)
    ramp = Workload(shape=Shape.RAMP, rate=10, end_rate=30).scaled_to(20)
    assert (ramp.rate, ramp.end_rate) == (20, 60)


def test_fault_fields_are_parsed() -> None:
    s = scenario("""
        [[fault]]
        at = 1
        kind = "slow"
        node = 0
        duration = 2
        slowdown = 4
        [[fault]]
        at = 2
        kind = "rollout"
        model = "builtin/mlp"
        version = "v2"
    """)
    slow, rollout = s.faults
    assert (slow.kind, slow.node, slow.duration, slow.slowdown) == (FaultKind.SLOW, 0, 2, 4)
    assert slow.describe() == "slow node 0 x4 for 2s"
    assert (rollout.model, rollout.version) == ("builtin/mlp", "v2")
    assert rollout.describe() == "rollout builtin/mlp to v2"


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(("text", "message"), [
    ("duration = [", "bad.toml: not valid TOML"),
    ("durations = 3", "unknown key 'durations' in the top level"),
    ("duration = \"long\"", "bad.toml: duration must be a number, got 'long'"),
    ("duration = true", "duration must be a number, got True"),
    ("duration = -1", "duration must be a positive number"),
    ("[workload]\nrat = 3", r"unknown key 'rat' in \[workload\]"),
    ("[workload]\nshape = \"sine\"", "workload.shape: unknown shape 'sine' "
                                     r"\(one of: constant, poisson, ramp, burst, steps\)"),
    ("[workload]\nshape = \"ramp\"", "workload.end_rate .* is required for shape = \"ramp\""),
    ("[workload]\nshape = \"burst\"\nburst_rate = 9",
     "workload.bursts is required for shape = \"burst\""),
    ("[workload]\nend_rate = 9", "end_rate applies only to shape = \"ramp\""),
    ("[workload]\nrate = -2", "workload.rate must be >= 0"),
    ("[workload]\nitems = 0", "workload.items must be at least 1"),
    ("[workload]\nrate = 1e9", "the limit is"),
    ("[[workload.model]]\nname = \"acme/x\"", r"workload.model\[0\].inputs: say which inputs"),
    ("[[workload.model]]\nweight = 2", r"workload.model\[0\].name is required"),
    ("[[workload.model]]\nname = \"acme/x\"\ninputs = \"text\"",
     "workload.model 'acme/x' is served by no node"),
    ("[nodes]\ncount = 3\n[[nodes.group]]\ncount = 2",
     "nodes.count is 3 but the groups hold 2 nodes"),
    ("[[nodes.group]]\nslowdown = 0.5", r"nodes.group\[0\].slowdown must be >= 1"),
    ("[[nodes.group]]\nmodels = \"builtin/mlp\"", r"nodes.group\[0\].models must be a list"),
    ("[[nodes.group]]\nprice_per_request = -1", "prices cannot be negative"),
    ("[[fault]]\nkind = \"kill\"\nnode = 0", r"fault\[0\].at is required"),
    ("[[fault]]\nat = 1\nkind = \"explode\"\nnode = 0", "unknown fault kind 'explode'"),
    ("[[fault]]\nat = 1\nkind = \"kill\"", r"fault\[0\].node is required for a kill fault"),
    ("[[fault]]\nat = 1\nkind = \"kill\"\nnode = 0\nslowdown = 3",
     r"fault\[0\].slowdown does not apply to a kill fault"),
    ("[[fault]]\nat = 1\nkind = \"kill\"\nnode = 4", r"node 4 is out of range"),
    ("[[fault]]\nat = 99\nkind = \"kill\"\nnode = 0", "must happen during the run"),
    ("[[fault]]\nat = 1\nkind = \"rejoin\"\nnode = 0", "node 0 is not down"),
    ("[[fault]]\nat = 1\nkind = \"kill\"\nnode = 0\n[[fault]]\nat = 2\nkind = \"leave\"\nnode = 0",
     "node 0 is already down"),
    ("[[fault]]\nat = 1\nkind = \"slow\"\nnode = 0\nslowdown = 1", "slowdown must be > 1"),
    ("[[fault]]\nat = 1\nkind = \"rollback\"\nmodel = \"builtin/mlp\"", "nothing to roll back"),
    ("[[fault]]\nat = 1\nkind = \"rollout\"", r"fault\[0\].model is required for a rollout"),
    ("[[fault]]\nat = 1\nkind = \"rollout\"\nmodel = \"acme/nope\"", "served by no node"),
    ("[promises]\np99 = 3", r"unknown key 'p99' in \[promises\]"),
    ("[promises]\np99_ms = 0", "promises.p99_ms must be positive"),
    ("[network]\nloss_percent = 120", "loss_percent in 0..100"),
    ("fault = 3", r"fault must be an array of tables \(\[\[fault\]\]\)"),
    ("[[fault]]\nat = 1\nkind = \"kill\"\nnode = 0\nfraction = 0.5",
     r"fault\[0\].fraction: a kill fault takes `node` or `fraction`, not both"),
    ("[[fault]]\nat = 1\nkind = \"kill\"\nfraction = 1.5", r"fraction must be in \(0, 1\]"),
    ("[[fault]]\nat = 1\nkind = \"rollout\"\nmodel = \"builtin/mlp\"\nfraction = 0.5",
     r"fault\[0\].fraction does not apply to a rollout fault"),
    ("[virtual]\nclient = 3", r"unknown key 'client' in \[virtual\]"),
    ("[model]\nclient = 3", r"unknown key 'client' in \[model\]"),  # the old name
    ("[virtual]\nclients = 1\n[model]\nclients = 2", r"\[model\] is the old name of \[virtual\]"),
    ("[virtual]\nclients = 0", "virtual.clients must be at least 1"),
    ("[virtual]\nclients = 2.5", "virtual.clients must be an integer"),
    ("[virtual]\nhedge = 1", "virtual.hedge must be true or false"),
    ("[virtual]\nbatching = 0", "virtual.batching must be true or false"),
    ("[virtual]\nloss = 1", r"virtual.loss is a fraction of transmissions in \[0, 1\)"),
    ("[virtual]\nmax_batch = 2\n[workload]\nitems = 3", r"virtual.max_batch \(2\) must hold"),
    ("[virtual]\nmax_queue_delay_ms = -1", "virtual.max_queue_delay_ms must be >= 0"),
    ("[virtual]\njoin_window = 20", "need 0 <= join_window <= warmup"),
    ("[virtual]\nmax_considered = 1", "virtual.max_considered must be 0 .all. or at least 2"),
    ("[virtual]\npreference = \"cheap\"", "virtual.preference must be 'latency', 'price' or a"),
])
def test_bad_files_give_clear_errors(text: str, message: str) -> None:
    nodes = "" if "[nodes" in text else "[nodes]\ncount = 2\n"
    if text.startswith("duration"):
        document = text
    elif text.startswith("["):
        document = "duration = 10\n" + nodes + text
    else:  # top-level keys come before any table
        document = text + "\nduration = 10\n" + nodes
    error = error_of(document)
    assert re.search(message, error), error
    assert error.startswith("bad.toml: ")


def test_faults_are_checked_in_time_order_not_file_order() -> None:
    s = scenario("""
        [[fault]]
        at = 6
        kind = "rejoin"
        node = 1
        [[fault]]
        at = 2
        kind = "kill"
        node = 1
    """)
    assert [f.kind for f in s.faults] == [FaultKind.REJOIN, FaultKind.KILL]


# --------------------------------------------------------------------------- send times


def test_constant_is_evenly_spaced() -> None:
    times = send_times(Workload(shape=Shape.CONSTANT, rate=4), 2.5, random.Random(0))
    assert times == pytest.approx([i * 0.25 for i in range(10)])
    assert send_times(Workload(shape=Shape.CONSTANT, rate=0), 5, random.Random(0)) == ()


def test_poisson_count_and_gaps() -> None:
    times = send_times(Workload(shape=Shape.POISSON, rate=50), 200, random.Random(1))
    assert len(times) == pytest.approx(10_000, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1 / 50, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean.
    sd = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert sd == pytest.approx(mean, rel=0.05)


def test_ramp_rate_rises_linearly() -> None:
    w = Workload(shape=Shape.RAMP, rate=10, end_rate=90)
    assert [rate_at(w, t, 100) for t in (0, 50, 100)] == [10, 50, 90]
    times = send_times(w, 100, random.Random(2))
    assert len(times) == pytest.approx(5000, rel=0.04)
    first = sum(1 for t in times if t < 25)   # expected (10 + 30) / 2 * 25 = 500
    last = sum(1 for t in times if t >= 75)   # expected (70 + 90) / 2 * 25 = 2000
    assert first == pytest.approx(500, rel=0.15)
    assert last == pytest.approx(2000, rel=0.08)


def test_burst_concentrates_requests_in_windows() -> None:
    w = Workload(shape=Shape.BURST, rate=5, burst_rate=200, bursts=(Burst(10, 2), Burst(30, 1)))
    assert rate_at(w, 11, 40) == 200
    assert rate_at(w, 12, 40) == 5
    assert rate_at(w, 30.5, 40) == 200
    times = send_times(w, 40, random.Random(3))
    inside = sum(1 for t in times if 10 <= t < 12 or 30 <= t < 31)
    assert inside == pytest.approx(600, rel=0.12)
    assert len(times) - inside == pytest.approx(5 * 37, rel=0.25)


@pytest.mark.parametrize("shape", list(Shape))
def test_schedule_is_sorted_bounded_and_deterministic(shape: Shape) -> None:
    w = Workload(shape=shape, rate=20, end_rate=40 if shape is Shape.RAMP else None,
                 burst_rate=80 if shape is Shape.BURST else None,
                 bursts=(Burst(1, 1),) if shape is Shape.BURST else ())
    a = send_times(w, 5, random.Random(7))
    assert a == send_times(w, 5, random.Random(7))
    assert list(a) == sorted(a)
    assert all(0 <= t < 5 for t in a)
    if shape is not Shape.CONSTANT:
        assert a != send_times(w, 5, random.Random(8))


def test_plan_picks_models_by_weight() -> None:
    s = scenario("""
        [workload]
        rate = 100
        [[workload.model]]
        name = "builtin/mlp"
        weight = 3
        [[workload.model]]
        name = "builtin/minilm"
        weight = 1
        [[nodes.group]]
        count = 1
        models = ["builtin/minilm"]
    """, base="duration = 50\n[[nodes.group]]\ncount = 1\nmodels = [\"builtin/mlp\"]\n")
    plan = plan_requests(s.workload, s.duration, random.Random(0))
    share = sum(1 for p in plan if p.model == "builtin/mlp") / len(plan)
    assert share == pytest.approx(0.75, abs=0.03)
    assert [p.index for p in plan] == list(range(len(plan)))
    assert plan == plan_requests(s.workload, s.duration, random.Random(0))


def test_the_virtual_table_and_fraction_faults_parse() -> None:
    s = parse_scenario(textwrap.dedent("""
        [virtual]
        clients = 7
        latency_ms = 12.5
        hedge = false
        max_price = 20
        preference = "0.7"
        max_queue_delay_ms = 50
        batching = false
        [[fault]]
        at = 1
        kind = "kill"
        fraction = 0.25
        [[fault]]
        at = 2
        kind = "rejoin"
        fraction = 0.25
        """), source="m.toml")
    v = s.virtual
    assert (v.clients, v.latency_ms, v.hedge) == (7, 12.5, False)
    assert (v.max_price, v.preference) == (20.0, "0.7")
    assert (v.max_queue_delay_ms, v.batching) == (50.0, False)
    assert v.speed_spread == VirtualSettings().speed_spread
    assert [(f.kind, f.node, f.fraction) for f in s.faults] == [
        (FaultKind.KILL, None, 0.25), (FaultKind.REJOIN, None, 0.25)]
    assert s.faults[0].describe() == "kill 25% of the nodes"
    assert parse_scenario("").virtual == VirtualSettings()


def test_the_old_name_of_the_virtual_table_still_reads() -> None:
    s = parse_scenario("[model]\nclients = 7\nhedge = false\n", source="old.toml")
    assert s.virtual == VirtualSettings(clients=7, hedge=False)


# --------------------------------------------------------------------------- chat traffic

CHAT_NODES = """
duration = 10
[[nodes.group]]
count = 2
models = ["builtin/mlp", "builtin/smollm2"]
[[workload.model]]
name = "builtin/mlp"
"""


def test_chat_tables_parse_with_defaults_and_values() -> None:
    s = scenario("""
        [[workload.chat]]
        model = "builtin/smollm2"
        [[workload.chat]]
        model = "builtin/smollm2"
        rate = 2
        max_tokens = 8
        temperature = 0.7
        timeout = 12
        max_in_flight = 3
        prompts = ["Say hi.", "Count to three."]
        [promises]
        max_lost_chats = 1
        ttft_p99_ms = 4000
    """, base=CHAT_NODES)
    first, second = s.workload.chats
    assert first == ChatMix("builtin/smollm2")
    assert (first.rate, first.max_tokens, first.temperature, first.prompts) == (0.5, 32, 0.0, ())
    assert second == ChatMix("builtin/smollm2", 2.0, 8, 0.7, 12.0, 3, ("Say hi.", "Count to three."))
    assert (s.promises.max_lost_chats, s.promises.ttft_p99_ms) == (1, 4000)
    # --rate scales the tensor requests only.
    assert s.with_overrides(rate=40).workload.chats == s.workload.chats


@pytest.mark.parametrize(("text", "message"), [
    ("[[workload.chat]]\nrate = 1", r"workload.chat\[0\].model is required"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nmodel_name = 1",
     r"unknown key 'model_name' in \[workload.chat\[0\]\]"),
    ("[[workload.chat]]\nmodel = \"acme/llm\"", r"workload.chat\[0\].model 'acme/llm' is served "
                                               r"by no node"),
    ("[[workload.chat]]\nmodel = \"builtin/mlp\"", "'builtin/mlp' does not generate text"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nrate = 0", r"chat\[0\].rate must be a "
                                                               "positive number"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nrate = nan", "rate must be a positive"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nrate = \"fast\"",
     r"workload.chat\[0\].rate must be a number"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nmax_tokens = 0",
     r"max_tokens must be in 1..1024, got 0"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nmax_tokens = 1000000000",
     r"max_tokens must be in 1..1024"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nmax_tokens = 3.5",
     "max_tokens must be an integer"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\ntemperature = -1",
     r"temperature must be in 0..2"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\ntimeout = 0", "timeout must be a positive"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\ntimeout = inf", "timeout must be a positive"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nmax_in_flight = 0",
     "max_in_flight must be at least 1"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nprompts = [\"  \"]",
     r"prompts\[0\] must be non-blank text"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nprompts = \"hi\"",
     "prompts must be a list of strings"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\nrate = 5000", "about 50000 chats; the limit"),
    ("[[workload.model]]\nname = \"builtin/smollm2\"\ninputs = \"text\"",
     "generates text: send it chats with a \\[\\[workload.chat\\]\\] table"),
    ("[promises]\nttft_p99_ms = 100", "chat promises .* need a \\[\\[workload.chat\\]\\]"),
    ("[promises]\nmax_lost_chats = 2", "chat promises .* need a"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\n[promises]\nttft_p99_ms = -5",
     "ttft_p99_ms must be a positive"),
    ("[[workload.chat]]\nmodel = \"builtin/smollm2\"\n[promises]\nmax_lost_chats = -1",
     "max_lost_chats cannot be negative"),
])
def test_bad_chat_tables_give_clear_errors(text: str, message: str) -> None:
    error = error_of(CHAT_NODES + text)
    assert re.search(message, error), error
    assert error.startswith("bad.toml: ")


def test_too_many_prompts_are_refused() -> None:
    prompts = ", ".join(f'"p{i}"' for i in range(65))
    error = error_of(CHAT_NODES + f'[[workload.chat]]\nmodel = "builtin/smollm2"\n'
                                  f"prompts = [{prompts}]")
    assert "at most 64 prompts" in error


def test_chat_plan_is_poisson_sorted_deterministic_and_apart_from_requests() -> None:
    w = Workload(chats=(ChatMix("a", rate=2.0), ChatMix("b", rate=0.5)))
    plan = plan_chats(w, 200.0, random.Random(3))
    assert plan == plan_chats(w, 200.0, random.Random(3))
    assert [c.index for c in plan] == list(range(len(plan)))
    times = [c.at for c in plan]
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < 200
    per_mix = [sum(1 for c in plan if c.mix == i) for i in (0, 1)]
    assert 340 < per_mix[0] < 460
    assert 70 < per_mix[1] < 130
    assert all(0 <= c.prompt < 1 << 16 for c in plan)
    assert plan_chats(Workload(), 200.0, random.Random(3)) == ()
    # Adding chat traffic leaves the request plan of a seed as it was.
    assert plan_requests(w, 20.0, random.Random(1)) == plan_requests(Workload(), 20.0,
                                                                      random.Random(1))
