"""The batching policy is a pure function: every decision tested directly."""

from __future__ import annotations

import math

import pytest

from swarm.node._batching import BatchPolicy, Dispatch, QueueView, Wait, decide

POLICY = BatchPolicy(max_batch_size=8, max_queue_delay=0.002)


def view(sizes: tuple[int, ...], *, wait: float = 0.0, busy: bool = False,
         gap: float = 0.0001, exec_time: float = 0.001, free_for: float = math.inf) -> QueueView:
    return QueueView(sizes=sizes, oldest_wait=wait, busy=busy, arrival_gap=gap,
                     execution_time=exec_time, free_for=free_for)


def test_empty_queue_waits_for_an_arrival() -> None:
    assert decide(POLICY, view(())) == Wait(None)


def test_busy_model_lets_the_next_batch_form() -> None:
    assert decide(POLICY, view((1, 1, 1), busy=True)) == Wait(None)


def test_lone_request_on_idle_model_goes_at_once() -> None:
    # Nothing else has arrived yet: no gap estimate.
    assert decide(POLICY, view((1,), gap=math.inf)) == Dispatch(1)


def test_slow_arrivals_do_not_wait_for_a_batch() -> None:
    # Requests arrive every 5 ms, one execution takes 1 ms: batching cannot help.
    assert decide(POLICY, view((1,), gap=0.005, exec_time=0.001)) == Dispatch(1)


def test_fast_arrivals_wait_for_a_fuller_batch() -> None:
    decision = decide(POLICY, view((1, 1), wait=0.0005, gap=0.0001, exec_time=0.001))
    assert decision == Wait(pytest.approx(0.0015))


def test_oldest_request_never_waits_past_max_queue_delay() -> None:
    assert decide(POLICY, view((1, 1), wait=0.002, gap=0.0001)) == Dispatch(2)


def test_a_slow_model_waits_a_fraction_of_its_execution_for_company() -> None:
    # A pass takes 60 ms: a fuller batch is worth up to 20% of it (12 ms), not only 2 ms...
    slow = view((1, 1), wait=0.005, gap=0.0005, exec_time=0.060)
    assert decide(POLICY, slow) == Wait(pytest.approx(0.007))
    assert decide(POLICY, view((1, 1), wait=0.012, gap=0.0005, exec_time=0.060)) == Dispatch(2)
    # ...unless the operator turned it off; a fast model keeps max_queue_delay.
    off = BatchPolicy(max_batch_size=8, max_queue_delay=0.002, max_queue_delay_fraction=0.0)
    assert decide(off, slow) == Dispatch(2)
    assert decide(POLICY, view((1, 1), wait=0.0005, gap=0.0001, exec_time=0.001)) == Wait(
        pytest.approx(0.0015))
    # A lone request on a model that is not outpaced by arrivals still goes at once.
    assert decide(POLICY, view((1,), gap=0.100, exec_time=0.060)) == Dispatch(1)


def test_the_wait_for_company_counts_from_when_the_model_was_free() -> None:
    # The request queued 50 ms behind a running batch; the model has been free for 0.5 ms.
    # Taking it alone now would run a batch of one while the clients just answered come
    # back (the 1 / 15 alternation of MiniLM at c=16): it gets the delay from now.
    behind = view((1,), wait=0.050, gap=0.0005, exec_time=0.001, free_for=0.0005)
    assert decide(POLICY, behind) == Wait(pytest.approx(0.0015))
    assert decide(POLICY, view((1,), wait=0.050, gap=0.0005, free_for=0.002)) == Dispatch(1)


def test_full_batch_dispatches_at_once() -> None:
    assert decide(POLICY, view((4, 4), gap=0.0001)) == Dispatch(2)


def test_requests_are_never_split_and_batch_stays_within_max() -> None:
    # 5 + 4 > 8: only the first request fits; the second waits for the next batch.
    assert decide(POLICY, view((5, 4, 1), gap=0.0001)) == Dispatch(1)


def test_oversized_head_request_still_dispatches_alone() -> None:
    # The service refuses requests larger than max_batch_size; the policy must not stall.
    assert decide(POLICY, view((9,), gap=0.0001)) == Dispatch(1)


def test_preferred_batch_size_dispatches_early() -> None:
    policy = BatchPolicy(max_batch_size=8, max_queue_delay=0.01, preferred_batch_sizes=(4,))
    assert decide(policy, view((2, 2), gap=0.0001)) == Dispatch(2)
    assert isinstance(decide(policy, view((2, 1), gap=0.0001)), Wait)


def test_batching_disabled_executes_one_request_at_a_time() -> None:
    policy = BatchPolicy(max_batch_size=8, enabled=False)
    assert decide(policy, view((1, 1, 1), gap=0.0001)) == Dispatch(1)


def test_arrival_not_due_before_the_delay_expires_dispatches() -> None:
    # Next arrival expected in 3 ms but only 1 ms of delay is left.
    assert decide(POLICY, view((1,), wait=0.001, gap=0.003, exec_time=0.01)) == Dispatch(1)


@pytest.mark.parametrize("kwargs", [
    {"max_batch_size": 0}, {"max_queue_delay": -1}, {"max_queue_size": 0},
    {"max_queue_delay_fraction": -0.1}, {"max_queue_delay_fraction": 1.5},
    {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
])
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- intra-op threads (pure)

def test_short_passes_run_narrow_and_long_ones_wide() -> None:
    from swarm.node._runtime import ThreadPolicy, intra_op_threads

    policy = ThreadPolicy.for_machine(cores=8)
    assert (policy.narrow, policy.wide) == (7, 8)
    assert intra_op_threads(policy, None) == 7  # nothing measured yet
    assert intra_op_threads(policy, 0.001) == 7
    assert intra_op_threads(policy, 0.050) == 8
    fixed = ThreadPolicy.for_machine(cores=8, fixed=3)
    assert intra_op_threads(fixed, 0.050) == intra_op_threads(fixed, 0.0001) == 3
    assert ThreadPolicy.for_machine(cores=1) == ThreadPolicy(1, 1)


def test_long_passes_use_the_thread_count_measured_faster() -> None:
    from swarm.node._runtime import ThreadPolicy, intra_op_threads

    policy = ThreadPolicy(narrow=1, wide=2, explore_every=4)
    # Each count is measured once first: wide, then narrow.
    assert intra_op_threads(policy, 0.05, {}, 0) == 2
    assert intra_op_threads(policy, 0.05, {2: 0.005}, 1) == 1
    # A quiet machine: two threads are faster per item, and stay in use...
    quiet = {2: 0.0025, 1: 0.005}
    assert [intra_op_threads(policy, 0.05, quiet, k) for k in range(2, 10)] == [
        2, 1, 2, 2, 2, 1, 2, 2]  # ...but every 4th long pass re-measures one thread
    # A loaded one: the spinning two-thread team collapsed; one thread wins.
    loaded = {2: 0.05, 1: 0.012}
    assert [intra_op_threads(policy, 0.05, loaded, k) for k in range(2, 6)] == [1, 2, 1, 1]
    # Short passes stay narrow whatever was measured.
    assert intra_op_threads(policy, 0.001, quiet, 7) == 1
    assert intra_op_threads(ThreadPolicy(1, 2, explore_every=0), 0.05, loaded, 3) == 1



def test_thread_counts_are_compared_within_a_batch_size_only() -> None:
    from swarm.node._runtime import ThreadChooser, ThreadPolicy

    # A node first served one request at a time (two threads measured at batch 1, one
    # thread at batch 1 too), then at high concurrency (batches of 32). Per item, a batch of
    # 1 costs far more than one of 32: compared across sizes, the count that ran the small
    # batches looks slow for good. Each size class decides from its own passes.
    policy = ThreadPolicy(narrow=1, wide=2, explore_every=0)
    chooser = ThreadChooser(keep=1)  # one pass of each decides (the default keeps two)
    assert chooser.threads(policy, 1) == 1  # nothing ran yet: narrow
    chooser.record(policy, 1, 1, 0.020)  # the first pass shows passes are long
    assert chooser.threads(policy, 1) == 2  # measure wide at batch 1
    chooser.record(policy, 2, 1, 0.022)  # at batch 1 two threads do not pay
    assert chooser.threads(policy, 1) == 1
    chooser.record(policy, 1, 1, 0.020)
    assert chooser.threads(policy, 1) == 1  # measured: one thread wins at batch 1
    # Batches of 32 have their own measurements: both counts are tried there first...
    assert chooser.threads(policy, 32) == 2
    chooser.record(policy, 2, 32, 0.110)  # 3.4 ms per item (the batch-1 passes: 20-22)
    assert chooser.threads(policy, 32) == 1
    chooser.record(policy, 1, 32, 0.200)
    # ...and two threads win there, though one thread's batch-1 numbers were better than
    # two threads' batch-1 numbers.
    assert [chooser.threads(policy, n) for n in (32, 33, 63)] == [2, 2, 2]
    assert chooser.threads(policy, 1) == 1
    # Short passes stay narrow in their class.
    chooser.record(policy, 1, 4, 0.001)
    assert chooser.threads(policy, 4) == 1


def test_one_disturbed_pass_does_not_decide_the_thread_count() -> None:
    from swarm.node._runtime import ThreadChooser, ThreadPolicy

    # MiniLM batches of 64: two threads take ~160 ms, one ~300 ms. The first two-thread
    # pass ran while the event loop answered a burst and took 400 ms. Judged on it alone,
    # one thread would win until the next exploration, 32 passes later.
    policy = ThreadPolicy(narrow=1, wide=2, explore_every=32)
    chooser = ThreadChooser()
    chooser.record(policy, 1, 64, 0.300)  # passes are long
    ran = []
    timings = {2: iter([0.400, 0.160, 0.160, 0.160]), 1: iter([0.300, 0.300, 0.300])}
    for _ in range(6):
        threads = chooser.threads(policy, 64)
        ran.append(threads)
        chooser.record(policy, threads, 64, next(timings[threads]))
    # Two passes of each are measured first (wide first), then the faster of each count's
    # last two decides: two threads, despite the disturbed pass.
    assert ran[:4] == [2, 1, 2, 1]
    assert ran[4:] == [2, 2]
    # A count that stays slower for two passes in a row loses (load that persists).
    loaded = ThreadChooser()
    loaded.record(policy, 1, 64, 0.300)
    for threads, seconds in ((2, 1.2), (1, 0.3), (2, 1.1), (1, 0.3)):
        assert loaded.threads(policy, 64) == threads
        loaded.record(policy, threads, 64, seconds)
    assert loaded.threads(policy, 64) == 1
