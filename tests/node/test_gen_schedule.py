"""The continuous-batching decision (swarm.node._generate._schedule), tested directly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.node._generate._schedule import SchedulerConfig, SeqState, Step, blocks_for, schedule

CFG = SchedulerConfig(max_num_seqs=4, max_batched_tokens=64, kv_blocks=40, block_size=16)


def run(n: int, tokens: int, computed: int | None = None) -> SeqState:
    return SeqState(n, tokens, tokens if computed is None else computed)


def wait(n: int, tokens: int) -> SeqState:
    return SeqState(n, tokens, 0)


@pytest.mark.parametrize(("running", "waiting", "expected"), [
    # nothing to do
    ([], [], Step()),
    # decodes first, then a waiting prompt fills the rest of the budget (chunked)
    ([run(1, 10), run(2, 20)], [wait(3, 100)],
     Step(decode=(1, 2), prefill=((3, 62),), admitted=(3,))),
    # a prompt still prefilling continues with a chunk before anyone new is admitted
    ([run(1, 100, computed=62)], [wait(2, 5)],
     Step(prefill=((1, 38), (2, 5)), admitted=(2,))),
    # slots: four running, the fifth waits
    ([run(i, 10) for i in range(4)], [wait(9, 5)], Step(decode=(0, 1, 2, 3))),
    # KV: a waiting prompt whose blocks do not fit stays waiting, and blocks those behind it
    ([run(1, 16 * 30)], [wait(2, 16 * 12), wait(3, 5)], Step(decode=(1,))),
    # KV exhaustion: the newest running sequence is preempted; nobody admitted that step
    ([run(1, 16 * 20), run(2, 16 * 20)], [wait(3, 5)], Step(decode=(1,), preempted=(2,))),
    # the token budget is spent oldest first: the last prefill waits for the next step
    ([run(1, 100, computed=0), run(2, 100, computed=0)], [],
     Step(prefill=((1, 64),))),
])
def test_table(running: list[SeqState], waiting: list[SeqState], expected: Step) -> None:
    assert schedule(running, waiting, CFG) == expected


def test_invalid_config_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SchedulerConfig(max_num_seqs=0)


seq_sizes = st.integers(1, 200)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[SeqState], list[SeqState], SchedulerConfig]:
    cfg = SchedulerConfig(max_num_seqs=draw(st.integers(1, 8)),
                          max_batched_tokens=draw(st.integers(1, 128)),
                          kv_blocks=draw(st.integers(14, 60)), block_size=16)
    running = []
    for i in range(draw(st.integers(0, cfg.max_num_seqs))):
        tokens = draw(seq_sizes)
        running.append(SeqState(i, tokens, draw(st.integers(0, tokens))))
    waiting = [SeqState(100 + i, draw(seq_sizes), 0) for i in range(draw(st.integers(0, 6)))]
    return running, waiting, cfg


@settings(max_examples=150, deadline=None)
@given(situations())
def test_invariants(case: tuple[list[SeqState], list[SeqState], SchedulerConfig]) -> None:
    running, waiting, cfg = case
    step = schedule(running, waiting, cfg)
    ids = [s.id for s in running]
    by_id = {s.id: s for s in [*running, *waiting]}
    # the token budget holds
    assert step.tokens <= cfg.max_batched_tokens
    # preempted: the newest running ones; then nobody is admitted
    assert list(step.preempted) == ids[len(ids) - len(step.preempted):][::-1]
    if step.preempted:
        assert not step.admitted
    kept = ids[:len(ids) - len(step.preempted)]
    # admitted: a prefix of the waiting queue, within the slots
    assert list(step.admitted) == [s.id for s in waiting[:len(step.admitted)]]
    assert len(kept) + len(step.admitted) <= cfg.max_num_seqs
    # KV: what stays and what comes fits the budget
    need = sum(blocks_for(max(by_id[i].tokens, by_id[i].computed + 1), cfg.block_size) for i in kept)
    need += sum(blocks_for(by_id[i].tokens + 1, cfg.block_size) for i in step.admitted)
    assert need <= cfg.kv_blocks
    # decode only when prefill is done; chunks never exceed what is left of the prompt
    for i in step.decode:
        assert not by_id[i].prefilling
    for i, n in step.prefill:
        assert 1 <= n <= by_id[i].tokens - by_id[i].computed
    # running sequences are served oldest first: the ones served are a prefix of `kept`
    served = [i for i in kept if i in step.decode or i in dict(step.prefill)]
    assert served == kept[:len(served)]
    # progress: with work anywhere, the step does something (every sequence fits the budget)
    fits = all(blocks_for(s.tokens + 1, cfg.block_size) <= cfg.kv_blocks for s in [*running, *waiting])
    if (running or waiting) and fits:
        assert not step.empty or step.preempted
